"""A running stream takes a new model version without a restart, and refuses a broken one:
`python -m pipelines.stream_infer --model_refresh_s` on Google's Pub/Sub emulator while messages keep
coming. Every message is answered exactly once across the swaps, each row names the version that
scored it, and its outputs are that version's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np

from models.prepare import prepare_model
from pipelines.local.demo import build_demo_model
from tests.test_batch_infer import penguin_values

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 80  # messages per second


def second_model():
    """The demo classifier with its output layer's weights changed: other probabilities."""
    model = build_demo_model()
    layer = model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([-kernel, bias + 0.3])
    return model


def expected(model, values):
    out = model({"measurements": np.asarray([v["measurements"] for v in values], np.float32),
                 "island": np.asarray([v["island"] for v in values], np.int64)})
    return np.asarray(out["probabilities"])


class Publisher:
    def __init__(self, topic):
        from google.cloud import pubsub_v1

        self.topic, self.client = topic, pubsub_v1.PublisherClient()
        self.values = {}  # message id -> the values it carried
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for i, v in enumerate(penguin_values(100_000, seed=5)):
            if self.stop.is_set():
                return
            payload = {"measurements": v["measurements"], "island": v["island"] if i % 40 else 9}
            message_id = self.client.publish(self.topic, json.dumps(payload).encode(), id=v["id"]).result(30)
            self.values[message_id] = dict(v, island=payload["island"])
            time.sleep(1 / RATE)


def wait_for(condition, what, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_stream_swaps_in_a_new_version_refuses_a_broken_one_and_answers_every_message_once(
        pubsub_emulator, penguin_model, tmp_path):
    emulator = pubsub_emulator
    base = str(tmp_path / "clf")
    shutil.copytree(penguin_model[0], os.path.join(base, "1"))
    requests, predictions, errors = (emulator.topic(f"refresh-{name}") for name in ("requests", "rows", "errors"))
    log_path = tmp_path / "job.log"
    with open(log_path, "w+") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "pipelines.stream_infer", "--input_subscription", emulator.subscription(requests),
             "--model", f"clf={base}", "--model_refresh_s", "0.5", "--output_topic", predictions,
             "--errors_topic", errors, "--payload_format", "json", "--max_batch_size", "16",
             "--max_batch_latency_ms", "50", "--project", emulator.project, "--pubsub_emulator", emulator.host],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: "stream_infer: reading" in log_path.read_text(), "the stream to start")
            publisher = Publisher(requests)
            publisher.thread.start()
            rows, dead = {}, []  # message id -> row; dead-letter message ids

            def collect():
                for message in emulator.pull(emulator.subscription(predictions), timeout_s=0.3):
                    row = json.loads(message.data)
                    assert message.attributes["message_id"] not in rows, "answered twice"
                    rows[message.attributes["message_id"]] = row
                dead.extend(m.attributes["message_id"] for m in emulator.pull(emulator.subscription(errors), 0.3))

            def versions():
                return {r["model_versions"]["clf"] for r in rows.values()}

            wait_for(lambda: collect() or len(rows) >= 100, "rows from version 1")
            prepare_model(second_model(), base)  # version 2, moved into place once verified
            wait_for(lambda: collect() or "2" in versions(), "rows from version 2")
            # version 3: a partial copy, no variables index: refused, version 2 serves on
            partial = os.path.join(base, f"tmp-{uuid.uuid4().hex}")
            shutil.copytree(os.path.join(base, "2"), partial)
            os.remove(os.path.join(partial, "variables", "variables.index"))
            os.rename(partial, os.path.join(base, "3"))
            wait_for(lambda: "version 3" in log_path.read_text() and "refused" in log_path.read_text(),
                     "version 3 refused")
            answered_before = len(rows)
            wait_for(lambda: collect() or len(rows) >= answered_before + 100, "rows after the refusal")
            publisher.stop.set()
            publisher.thread.join(30)
            published = dict(publisher.values)
            wait_for(lambda: collect() or set(rows) | set(dead) >= set(published), "every message answered", 90)
            job.send_signal(signal.SIGINT)
            assert job.wait(60) == 0
            collect()
        finally:
            if job.poll() is None:
                job.kill()
    text = log_path.read_text()
    assert sorted(list(rows) + dead) == sorted(published), "each message answered exactly once"
    assert versions() == {"1", "2"}, versions()
    assert "variables.index is missing" in text and "1 keeps serving" not in text and "2 keeps serving" in text
    assert "model refresh: clf version 2 loaded and serving from the next batch (was 1)" in text  # an info line, shown
    models = {"1": penguin_model[1], "2": second_model()}
    for version, model in models.items():
        ids = [m for m, r in rows.items() if r["model_versions"]["clf"] == version]
        np.testing.assert_allclose([rows[m]["clf"]["probabilities"] for m in ids],
                                   expected(model, [published[m] for m in ids]), rtol=1e-5, atol=1e-6)
    print(f"refresh: published {len(published)}, rows {len(rows)} (version 1: "
          f"{sum(r['model_versions']['clf'] == '1' for r in rows.values())}, version 2: "
          f"{sum(r['model_versions']['clf'] == '2' for r in rows.values())}), dead letters {len(dead)}")
