"""The real entry point on two SDK worker processes: Beam's FnApiRunner with
--direct_running_mode=multi_processing --direct_num_workers=2 runs each worker as its own Python
process over the Fn API (gRPC), as Dataflow's runner v2 runs them. Nothing is shared with the
launcher but the pipeline itself: no main session, no in-process model cache, no patched module.

For each job: every record is one prediction or one dead letter, the launcher reads the counters
back from both workers, each model loads once per worker process, and both processes score; the
TFRecord job reads ONE file, so it is the redistribution of its chunks that feeds the second worker.
That job runs as `python -m pipelines.batch_infer` in the background while the other two run in
this process, which keeps the module under a minute on 2 cores (about 50 s here).
"""

import json
import os
import subprocess
import sys

import pytest

from models.serving.examples import make_example
from pipelines import batch_infer
from tests.helpers import read_jsonl, write_tfrecord_file
from tests.test_batch_infer import penguin_values

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--max_batch_size", "50"]


def manifest_of(output):
    with open(output + ".manifest.json") as f:
        return json.load(f)


def check_spread_over_two_processes(manifest, models):
    run = manifest["run"]
    assert run["runner"] == "FnApiRunner (multi_processing, 2 workers)" and run["redistribute"] is True
    assert run["scoring_processes"] == 2
    assert run["models_loaded"] == models * run["scoring_processes"]  # once per model per process


@pytest.fixture(scope="module")
def command_line_job(penguin_model, tmp_path_factory):
    """`python -m pipelines.batch_infer` over ONE TFRecord file (2,000 examples and 2 garbage
    records), started in the background so its start-up overlaps the other jobs of this module:
    (values, output prefix, the process)."""
    version_dir, _ = penguin_model
    work = tmp_path_factory.mktemp("command_line")
    values = penguin_values(2000, seed=5)
    garbage = [b"\x0a\xff not an example", b"\x00" * 7]
    path = write_tfrecord_file(str(work / "one.tfrecord"),
                               [make_example(v).SerializeToString() for v in values] + garbage)
    out = str(work / "out" / "pred")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.batch_infer", "--input", path, "--model", f"clf={version_dir}",
         "--output", out, "--key_feature", "id"] + TWO_WORKERS,
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    yield values, out, process
    if process.poll() is None:
        process.kill()


def test_a_graph_job_on_two_worker_processes(graph_models, write_tfrecords, tmp_path, command_line_job):
    xs = [[0.25 * i] for i in range(600)]
    paths = [write_tfrecords(f"x-{n}.tfrecord", [make_example({"x": x}).SerializeToString() for x in part])
             for n, part in enumerate((xs[:400], xs[400:]))]
    out = str(tmp_path / "graph")
    _, counters = batch_infer.run(["--input", str(tmp_path / "x-*.tfrecord"), "--model",
                                   f"five={graph_models['five'][0]}", "--model", f"ten={graph_models['ten'][0]}",
                                   "--output", out] + TWO_WORKERS)
    assert len(paths) == 2
    assert (counters["records_read"], counters["predictions_written"]) == (600, 600)
    assert not any(k.startswith("dead_letters_") for k in counters)
    rows = read_jsonl(out + "-*.jsonl")
    assert sorted(round(r["ten"]["y"][0] - 2 * r["five"]["y"][0], 6) for r in rows) == [0.0] * 600
    assert sorted(r["five"]["y"][0] for r in rows) == pytest.approx(sorted(5 * x[0] for x in xs))
    check_spread_over_two_processes(manifest_of(out), models=2)


def test_a_json_lines_job_on_two_worker_processes(penguin_model, tmp_path, command_line_job):
    version_dir, _ = penguin_model
    values = penguin_values(900, seed=6)
    lines = [json.dumps(v) for v in values] + ['{"id": "broken", "measurements": [1, 2', '{"id": "short", '
                                               '"measurements": [1], "island": 0}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "json")
    _, counters = batch_infer.run(["--input", str(tmp_path / "in.jsonl"), "--model", f"clf={version_dir}",
                                   "--output", out, "--key_feature", "id"] + TWO_WORKERS)
    dead = sum(v for k, v in counters.items() if k.startswith("dead_letters_"))
    assert (counters["records_read"], counters["predictions_written"], dead) == (902, 900, 2)
    assert sorted(r["key"] for r in read_jsonl(out + "-*.jsonl")) == sorted(v["id"] for v in values)
    dead_rows = read_jsonl(out + ".errors-*.jsonl")
    assert len(dead_rows) == 2 and "short" in {r["key"] for r in dead_rows}
    check_spread_over_two_processes(manifest_of(out), models=1)


def test_one_tfrecord_file_scored_by_two_worker_processes_from_the_command_line(command_line_job):
    values, out, process = command_line_job
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "scored in 2 worker processes; chunks redistributed" in stdout
    assert "Discarding unparseable args" not in stderr  # the workers' start-up notes are kept out
    counts = manifest_of(out)["counts"]
    assert (counts["records_in"], counts["predictions"], counts["dead_letters"]) == (2002, 2000, 2)
    rows = read_jsonl(out + "-*.jsonl")
    assert sorted(r["key"] for r in rows) == sorted(v["id"] for v in values)
    assert len(read_jsonl(out + ".errors-*.jsonl")) == 2
    check_spread_over_two_processes(manifest_of(out), models=1)
