"""The stream's console: progress lines from the counts and latencies pubsub_acks reports (pure,
with a test clock), and the Pub/Sub emulator command's clean stop and restart."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.local.pubsub_emulator import EmulatorError, emulator_command
from pipelines.local.stream_progress import IDLE_EVERY_S, StreamProgress
from tests.helpers import wait_for_output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_show_counts_rate_and_latency_of_the_last_window():
    clock = Clock()
    progress = StreamProgress(clock)
    assert not progress.due(5)
    clock.now += 5
    assert not progress.due(5)  # nothing answered yet: the idle interval applies
    for i in range(100):
        progress.published(dead_letter=i % 10 == 0)
    progress.acknowledged([0.1] * 98 + [2.0, None])
    assert progress.due(5)
    assert progress.line(in_flight=7) == (
        "stream_infer: 100 messages answered; 90 rows, 10 dead letters out; 20.0 msg/s over the last 5 s; "
        "latency p50 0.10 s, p99 0.14 s; 7 in flight")  # p99 of 99 values: 0.1 + 0.02 * (2.0 - 0.1)
    clock.now += 10
    progress.acknowledged([0.5])
    assert progress.line() == ("stream_infer: 101 messages answered; 90 rows, 10 dead letters out; 0.1 msg/s over "
                               "the last 10 s; latency p50 0.50 s, p99 0.50 s; 0 in flight")
    clock.now += IDLE_EVERY_S
    assert progress.due(5)  # idle: a line every IDLE_EVERY_S says the stream is alive
    assert "0.0 msg/s" in progress.line() and "latency" not in progress.line()
    assert progress.totals() == ("stream_infer: in 75 s: 101 messages answered, 90 rows and 10 dead letters "
                                 "out, 1.3 msg/s, max latency 2.00 s")


def _emulator_or_skip():
    try:
        emulator_command()
    except EmulatorError as e:
        pytest.skip(str(e))


def _start_emulator_command(port, log):
    process = subprocess.Popen([sys.executable, "-m", "pipelines.local.pubsub_emulator", "--port", str(port),
                                "--topic", "requests"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    return wait_for_output(process, log, "Ctrl-C stops it", "the emulator command", timeout_s=90)


def _port_answers(port):
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_emulator_command_stops_its_java_child_on_sigterm_and_restarts_with_existing_topics(tmp_path):
    _emulator_or_skip()
    from pipelines.local.pubsub_emulator import _free_port

    port = _free_port()
    for run in range(2):
        with open(tmp_path / f"emulator-{run}.log", "w+") as log:
            process = _start_emulator_command(port, log)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            log.seek(0)
            text = log.read()
        assert "topic projects/local-project/topics/requests" in text and "Traceback" not in text, text
        deadline = time.monotonic() + 15
        while _port_answers(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _port_answers(port), "the emulator's Java process outlived the command"


def test_creating_a_topic_that_exists_is_fine_without_a_unique_name(pubsub_emulator):
    first = pubsub_emulator.topic("fixed-name", unique=False)
    assert pubsub_emulator.topic("fixed-name", unique=False) == first  # a restart: no 409
