"""Local streams lose nothing when stopped: `python -m pipelines.stream_infer` on Google's Pub/Sub
emulator, stopped mid-stream while messages keep coming, then restarted on the same subscription.

- kill -9: every message id is answered (a prediction or a dead letter) at least once;
- Ctrl-C (SIGINT) and SIGTERM: the job drains and exits 0; every message id is answered exactly once.
"""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.helpers import wait_for_output
from tests.test_batch_infer import penguin_values

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES, RATE, STOP_AFTER = 600, 100, 250


class Stream:
    """Topics and a request subscription (10 s ack deadline, so a killed job's messages come back
    soon) on the emulator, the jobs started on them, and what came out."""

    def __init__(self, emulator, model_dir, logs):
        from google.cloud import pubsub_v1

        self.emulator, self.model_dir, self.logs, self.jobs = emulator, model_dir, logs, []
        suffix = uuid.uuid4().hex[:8]
        self.requests = f"projects/{emulator.project}/topics/stop-requests-{suffix}"
        self.subscription = self.requests.replace("/topics/", "/subscriptions/")
        pubsub_v1.PublisherClient().create_topic(name=self.requests)
        pubsub_v1.SubscriberClient().create_subscription(name=self.subscription, topic=self.requests,
                                                         ack_deadline_seconds=10)
        self.predictions, self.errors = emulator.topic("stop-predictions"), emulator.topic("stop-errors")
        self.answers = []  # message ids of every prediction and dead letter, repeats included
        self.published = []

    def start(self):
        log = open(os.path.join(self.logs, f"job-{len(self.jobs)}.log"), "w+")
        job = subprocess.Popen(
            [sys.executable, "-m", "pipelines.stream_infer", "--input_subscription", self.subscription,
             "--model", f"clf={self.model_dir}", "--output_topic", self.predictions, "--errors_topic", self.errors,
             "--payload_format", "json", "--key_attribute", "id", "--max_batch_size", "32",
             "--max_batch_latency_ms", "50", "--project", self.emulator.project,
             "--pubsub_emulator", self.emulator.host, "--progress_every_s", "1"],
            cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=log, stderr=subprocess.STDOUT,
            text=True)
        job.log = log
        self.jobs.append(job)
        return wait_for_output(job, log, "stream_infer: reading", "the stream")  # the job says when it reads

    def publish_in_background(self):
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        values = penguin_values(MESSAGES, seed=12)

        def run():
            for i, v in enumerate(values):
                payload = {"measurements": v["measurements"], "island": v["island"] if i % 50 else 9}
                self.published.append(publisher.publish(self.requests, json.dumps(payload).encode(),
                                                        id=v["id"]).result(timeout=30))
                time.sleep(1 / RATE)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def collect(self, until, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:
            for topic in (self.predictions, self.errors):
                self.answers += [m.attributes["message_id"]
                                 for m in self.emulator.pull(self.emulator.subscription(topic), timeout_s=0.3)]

    def all_answered(self):
        return len(self.published) == MESSAGES and set(self.published) <= set(self.answers)


def stop_cleanly(job, how=signal.SIGINT):
    """Signals the job and waits for it; (exit code, what it printed)."""
    job.send_signal(how)
    job.wait(timeout=60)
    job.log.seek(0)
    return job.returncode, job.log.read()


@pytest.fixture
def stream(pubsub_emulator, penguin_model, tmp_path):
    made = Stream(pubsub_emulator, penguin_model[0], str(tmp_path))
    yield made
    for job in made.jobs:
        if job.poll() is None:
            job.kill()


def test_kill_9_mid_stream_then_restart_answers_every_message_at_least_once(stream):
    first = stream.start()
    publishing = stream.publish_in_background()
    stream.collect(lambda: len(stream.answers) >= STOP_AFTER)
    first.kill()  # kill -9: no drain, nothing acknowledged after this
    first.wait(timeout=30)
    second = stream.start()
    stream.collect(stream.all_answered)
    publishing.join(timeout=60)
    code, err = stop_cleanly(second)
    repeats = sum(c - 1 for c in collections.Counter(stream.answers).values())
    print(f"kill -9: published {len(stream.published)}, answered {len(set(stream.answers))}, repeated {repeats}")
    assert code == 0, err[-2000:]
    assert len(stream.published) == MESSAGES and set(stream.answers) == set(stream.published)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_a_clean_stop_mid_stream_then_restart_answers_every_message_exactly_once(stream, how):
    first = stream.start()
    publishing = stream.publish_in_background()
    stream.collect(lambda: len(stream.answers) >= STOP_AFTER)
    code, err = stop_cleanly(first, how)
    assert code == 0, err[-2000:]
    assert "stream_infer: stopped;" in err and "0 handed back" in err
    first_err = err
    second = stream.start()
    stream.collect(stream.all_answered)
    publishing.join(timeout=60)
    stream.collect(lambda: False, timeout_s=2)  # a repeat would arrive now
    code, err = stop_cleanly(second, how)
    counts = collections.Counter(stream.answers)
    print(f"{signal.Signals(how).name}: published {len(stream.published)}, answered {len(counts)}, "
          f"repeated {sum(c - 1 for c in counts.values())}")
    assert code == 0, err[-2000:]
    assert sorted(counts) == sorted(stream.published) and set(counts.values()) == {1}
    # the console: progress lines while it ran, and final counts that add up across the stop
    assert re.search(r"stream_infer: [\d,]+ messages answered; .*msg/s over the last \d+ s; latency p50 "
                     r"[\d.]+ s, p99 [\d.]+ s", first_err), first_err[-2000:]
    answered = [int(re.search(r"stream_infer: in [\d,]+ s: ([\d,]+) messages answered", text).group(1)
                    .replace(",", "")) for text in (first_err, err)]
    assert sum(answered) == MESSAGES, (answered, err[-2000:])
