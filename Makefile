# Quickstart: `make demo` runs the job on the embedded demo; `make test` runs the tests.
# Both create .venv and install the pinned stack on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-matrix bench bench-gpu bench-stream bench-soak install clean bigquery-install bigquery-local pubsub-local

$(STAMP): requirements.txt requirements-dev.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.batch_infer

test: $(STAMP)
	$(PY) -m pytest -q tests

# the whole conformance matrix (tests/matrix): every source x model shape x sink, the matrix_full
# cells too (`make test` runs its fast slice only)
test-matrix: $(STAMP)
	$(PY) -m pytest -q tests/matrix -m "matrix_full or not matrix_full"

bench: $(STAMP)
	$(PY) -m bench.run
	$(PY) -m bench.workers
	$(PY) -m bench.stream_latency

# the batch job against raw TF on this machine's GPU, models B and C (stops starting repeats past 330 s; exits 2 without a GPU)
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu_check

# publish -> result latency of stream_infer on the Pub/Sub emulator (needs the gcloud SDK's emulator)
bench-stream: $(STAMP)
	$(PY) -m bench.stream_latency

# memory of a 30-minute stream at 200 msg/s with a model swap every 10 minutes, beside a plain Beam stream
bench-soak: $(STAMP)
	$(PY) -m bench.soak

# Google's Pub/Sub emulator on 127.0.0.1:8085 in the foreground, with demo topics + subscriptions
pubsub-local: $(STAMP)
	$(PY) -m pipelines.local.pubsub_emulator --topic requests --topic predictions --topic errors

# A local BigQuery (REST :9050, Storage Read gRPC :9060) and GCS (:9023) on 127.0.0.1, in the
# foreground; their own Python 3.13 venv, .bigquery-venv (tools/bigquery_local). Jobs reach them
# with --bigquery_emulator http://127.0.0.1:9050 --bigquery_emulator_grpc 127.0.0.1:9060
# --storage_emulator http://127.0.0.1:9023 (docs/sources.md, "A local BigQuery").
bigquery-install:
	bash tools/bigquery_local/install.sh

bigquery-local:
	bash tools/bigquery_local/start.sh $(BIGQUERY_LOCAL_ARGS)

clean:
	rm -rf .demo .pytest_cache build *.egg-info
