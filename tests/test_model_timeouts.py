"""--model_timeout_s (transforms.scoring.timeouts): a model call past the limit is abandoned, the
model reloaded and the batch isolated, so a record that always hangs ends as an `infer` dead
letter naming the limit and the rest of its batch is scored; a local stream stopped during a hung
call exits within its drain time and hands the message back.

The model is a real SavedModel (a tf.Module) that sleeps, inside TensorFlow, as many seconds as
the record's `hang` feature says (at most HANG_CAP_S, so no test leaves a call running for long),
and gives y = 2 * x.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from models.serving.examples import make_example
from tests.helpers import read_jsonl, wait_for_output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_CAP_S = 60.0


def hanging_export(export_dir: str, started_marker: str = "") -> str:
    """A TF2 SavedModel: x float32[1], hang float32[1] -> y = 2x, after sleeping max(hang) seconds
    (a tf.data sleep, so a hung call waits without spinning a core; capped at HANG_CAP_S). With
    started_marker, a call about to sleep first writes that file (tests see the hang begin)."""
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops.testing import sleep  # tf.data's own test sleep

    def sleeping(seconds):
        marked = tf.cond(seconds > 0, lambda: tf.io.write_file(started_marker, "hanging") if started_marker
                         else tf.no_op(), tf.no_op)
        with tf.control_dependencies([marked]):
            pause = tf.data.Dataset.range(1).apply(sleep(tf.cast(seconds * 1e6, tf.int64)))
            return pause.reduce(tf.constant(0, tf.int64), lambda total, item: total + item)

    class Hanging(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, serialized):
            parsed = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32),
                                                      "hang": tf.io.FixedLenFeature([1], tf.float32)})
            seconds = tf.clip_by_value(tf.reduce_max(tf.concat([parsed["hang"][:, 0], [0.0]], 0)), 0.0, HANG_CAP_S)
            with tf.control_dependencies([sleeping(seconds)]):
                return {"y": 2.0 * parsed["x"]}

    module = Hanging()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def wait_for_file(path: str, process, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.path.exists(path), f"the model call never began to hang ({process.poll()})"


def ctrl_c_reaches_it() -> None:
    """preexec_fn of a job the test stops with Ctrl-C: SIGINT as in a terminal's foreground job,
    even where this test run inherited it ignored (a background shell without job control ignores
    SIGINT in what it starts, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when_hung(job, marker: str, limit_s: float) -> float:
    """Ctrl-C (SIGINT) to a job once its model call hangs; the seconds it then took to exit (killed
    after limit_s, so no test leaves it running)."""
    try:
        wait_for_file(marker, job)
        job.send_signal(signal.SIGINT)
        started = time.monotonic()
        job.wait(timeout=limit_s)
        return time.monotonic() - started
    finally:
        if job.poll() is None:
            job.kill()


def record(x: float, hang: float = 0.0) -> bytes:
    return make_example({"x": [float(x)], "hang": [float(hang)]}).SerializeToString()


@pytest.fixture(scope="module")
def hanging_model(tmp_path_factory):
    return hanging_export(str(tmp_path_factory.mktemp("hanging") / "1"))


@pytest.fixture
def graph_and_call(hanging_model):
    from models.serving.model import load_serving_model
    from transforms.graph.model import parallel_graph
    from transforms.scoring.engines import load_batch_call

    graph = parallel_graph([load_serving_model(hanging_model, name="slow")], "fast")
    return graph, load_batch_call("fast", hanging_model, "serving_default")


@pytest.fixture
def marked_model(tmp_path):
    """(the hanging model, the file its call writes as it begins to hang)."""
    marker = str(tmp_path / "hang.started")
    return hanging_export(str(tmp_path / "marked" / "1"), marker), marker


def wait_until_no_call_hangs(limit_s: float = HANG_CAP_S + 10) -> float:
    """Seconds until every abandoned call of this process has ended by itself."""
    from transforms.scoring.timeouts import HUNG

    started = time.monotonic()
    while HUNG.count() and time.monotonic() - started < limit_s:
        time.sleep(0.1)
    assert HUNG.count() == 0
    return time.monotonic() - started


def test_a_call_within_the_limit_answers_as_the_model_does(graph_and_call):
    from transforms.scoring.timeouts import time_limited

    _, call = graph_and_call
    xs = [1.5, -2.0, 4.0]
    limited = time_limited(call, 30.0, "slow")
    np.testing.assert_allclose(limited([record(x) for x in xs])["y"], call([record(x) for x in xs])["y"])
    np.testing.assert_allclose(limited([record(x) for x in xs])["y"][:, 0], 2 * np.float32(xs))


def test_a_call_past_the_limit_is_abandoned_at_the_limit_and_the_model_reloaded(graph_and_call):
    from transforms.scoring.timeouts import HUNG, ModelTimeoutError, time_limited

    _, call = graph_and_call
    reloads = []

    def reload(stale):
        reloads.append(stale)
        return stale

    limited = time_limited(call, 0.5, "slow", reload)
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError, match=r"--model_timeout_s 0\.5.*abandoned and the model reloaded"):
        limited([record(1.0), record(2.0, hang=3.0)])
    waited = time.monotonic() - started
    assert waited < 0.5 + 1.0, waited  # not the 3 s the call takes
    assert reloads == [call] and HUNG.count() == 1
    ended_after = wait_until_no_call_hangs()  # the abandoned call ends by itself
    print(f"timed out after {waited:.2f} s; the abandoned call ended {ended_after:.1f} s later")


def test_a_record_that_always_hangs_is_one_infer_dead_letter_and_its_batch_is_scored(graph_and_call):
    from transforms.records.chunk import RecordChunk
    from transforms.scoring.beam import limited_call
    from transforms.scoring.engines import serving_call
    from transforms.scoring.executor import score_chunk

    graph, call = graph_and_call
    (node,) = graph.nodes
    xs = [0.5 * i for i in range(8)]
    records = [record(x, hang=8.0 if i == 5 else 0.0) for i, x in enumerate(xs)]
    keys = [f"r{i}" for i in range(8)]
    started = time.monotonic()
    scored = score_chunk(graph, {"slow": limited_call(node, call, 1.0)}, RecordChunk(keys, records))
    took = time.monotonic() - started
    result = scored.models["slow"]
    assert [d["key"] for d in scored.dead] == ["r5"] and len(result.indices) + len(scored.dead) == 8
    (dead,) = scored.dead
    assert dead["stage"] == "infer" and dead["model"] == "slow" and dead["error_type"] == "ModelTimeoutError"
    assert "--model_timeout_s 1" in dead["error"]
    assert sorted(scored.keys[i] for i in result.indices) == [k for k in keys if k != "r5"]
    np.testing.assert_allclose(result.outputs["y"][:, 0], [2 * np.float32(xs[i]) for i in result.indices])
    assert serving_call(call) is not call  # the model was reloaded and serves from the fresh copy
    print(f"8 records, one hanging: isolated in {took:.1f} s")
    assert took < 30
    wait_until_no_call_hangs()


def test_hung_calls_are_bounded_and_past_the_bound_calls_fail_at_once(graph_and_call, monkeypatch):
    from transforms.scoring import timeouts

    _, call = graph_and_call
    monkeypatch.setattr(timeouts, "MAX_HUNG_CALLS", 2)
    limited = timeouts.time_limited(call, 0.2, "slow")
    for _ in range(2):
        with pytest.raises(timeouts.ModelTimeoutError, match="abandoned"):
            limited([record(1.0, hang=2.0)])
    started = time.monotonic()
    with pytest.raises(timeouts.ModelTimeoutError, match="not called: 2 earlier model calls"):
        limited([record(1.0)])
    assert time.monotonic() - started < 0.1
    wait_until_no_call_hangs()
    np.testing.assert_allclose(limited([record(3.0)])["y"], [[6.0]])  # calls run again once they end


def test_stop_waiting_ends_a_wait_at_once_without_an_exception_the_executor_would_isolate(graph_and_call):
    from transforms.scoring import timeouts

    _, call = graph_and_call
    limited = timeouts.time_limited(call, 60.0, "slow")
    threading.Timer(0.5, timeouts.stop_waiting).start()
    started = time.monotonic()
    try:
        with pytest.raises(timeouts.ScoringAbandoned):
            limited([record(1.0, hang=3.0)])
    finally:
        timeouts.resume_waiting()
    assert time.monotonic() - started < 2.0
    assert not issubclass(timeouts.ScoringAbandoned, Exception)


def test_a_batch_job_turns_the_hanging_record_into_a_dead_letter_and_scores_the_rest(hanging_model, tmp_path):
    from pipelines import batch_infer
    from tests.helpers import write_tfrecord_file

    xs = [float(i) for i in range(40)]
    path = write_tfrecord_file(str(tmp_path / "in.tfrecord"),
                               [record(x, hang=10.0 if i == 17 else 0.0) for i, x in enumerate(xs)])
    out = str(tmp_path / "out")
    started = time.monotonic()
    batch_infer.run(["--input", path, "--model", f"slow={hanging_model}", "--output", out,
                     "--model_timeout_s", "2"], save_main_session=False)
    took = time.monotonic() - started
    rows, dead = read_jsonl(out + "-*.jsonl"), read_jsonl(out + ".errors-*.jsonl")
    assert len(rows) + len(dead) == len(xs)
    assert [(d["key"], d["stage"], d["error_type"]) for d in dead] == [("in.tfrecord:17", "infer", "ModelTimeoutError")]
    by_key = {r["key"]: r["slow"]["y"][0] for r in rows}
    assert by_key == {f"in.tfrecord:{i}": 2 * x for i, x in enumerate(xs) if i != 17}
    print(f"batch job, 40 records, one hanging 10 s, --model_timeout_s 2: {took:.1f} s")
    assert took < 40  # not stalled: each timeout is 2 s; the job does not wait for the hung calls
    wait_until_no_call_hangs()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_or_missing_timeout_is_refused_before_the_job(value, hanging_model, tmp_path, capsys):
    from pipelines import batch_infer, stream_infer

    batch = batch_infer.main(["--input", str(tmp_path / "none.tfrecord"), "--model", hanging_model,
                              "--output", str(tmp_path / "o"), "--model_timeout_s", value])
    stream = stream_infer.main(["--input_subscription", "projects/p/subscriptions/s", "--model", hanging_model,
                                "--output_topic", "projects/p/topics/o", "--errors_topic", "projects/p/topics/e",
                                "--model_timeout_s", value])
    err = capsys.readouterr().err
    assert batch == 2 and stream == 2
    assert err.count("--model_timeout_s") >= 2 and "must be 0 (no limit) or a number of seconds" in err


def publish(topic, payloads):
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    return [f.result(timeout=30) for f in [publisher.publish(topic, p, id=str(i)) for i, p in enumerate(payloads)]]


def test_a_stream_answers_a_hanging_message_with_a_dead_letter_and_the_others_with_rows(pubsub_emulator,
                                                                                       hanging_model):
    from pipelines import stream_infer
    from pipelines.local import pubsub_prompt_pulls
    from tests.test_stream_infer import collect

    emulator = pubsub_emulator
    requests, predictions, errors = (emulator.topic(n) for n in ("hang-requests", "hang-rows", "hang-errors"))
    result = stream_infer.run(["--input_subscription", emulator.subscription(requests), "--model",
                               f"slow={hanging_model}", "--output_topic", predictions, "--errors_topic", errors,
                               "--key_attribute", "id", "--max_batch_size", "16", "--max_batch_latency_ms", "200",
                               "--model_timeout_s", "1", "--project", emulator.project],
                              save_main_session=False, wait=False)
    try:
        ids = publish(requests, [record(i, hang=8.0 if i == 3 else 0.0) for i in range(10)])
        rows, dead = collect(emulator, [predictions, errors], len(ids), timeout_s=120)
    finally:
        result.cancel()
        pubsub_prompt_pulls.close_readers()
    assert sorted(m.attributes["message_id"] for m in rows + dead) == sorted(ids)
    assert [(m.attributes["id"], m.attributes["error_stage"], m.attributes["error_type"]) for m in dead] == [
        ("3", "infer", "ModelTimeoutError")]
    assert "--model_timeout_s 1" in dead[0].attributes["error"]
    assert {json.loads(m.data)["key"]: json.loads(m.data)["slow"]["y"][0] for m in rows} == {
        str(i): 2.0 * i for i in range(10) if i != 3}
    wait_until_no_call_hangs()


def stream_job(emulator, model_dir, subscription, log):
    """python -m pipelines.stream_infer on the subscription (a 300 s model limit), ready to read."""
    predictions, errors = emulator.topic("hung-rows"), emulator.topic("hung-errors")
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.stream_infer", "--input_subscription", subscription, "--model",
         f"slow={model_dir}", "--output_topic", predictions, "--errors_topic", errors,
         "--model_timeout_s", "300", "--max_batch_latency_ms", "50", "--project", emulator.project,
         "--pubsub_emulator", emulator.host, "--progress_every_s", "0"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=log, stderr=subprocess.STDOUT, text=True,
        preexec_fn=ctrl_c_reaches_it)
    job.outputs = (predictions, errors)
    return wait_for_output(job, log, "stream_infer: reading", "the stream")


def test_a_stream_stopped_during_a_hung_call_exits_within_its_drain_time_and_hands_the_message_back(
        pubsub_emulator, marked_model, tmp_path):
    from google.cloud import pubsub_v1

    from pipelines.local.pubsub_acks import DRAIN_S

    emulator = pubsub_emulator
    requests = f"projects/{emulator.project}/topics/hung-{uuid.uuid4().hex[:8]}"
    subscription = requests.replace("/topics/", "/subscriptions/")
    pubsub_v1.PublisherClient().create_topic(name=requests)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=requests, ack_deadline_seconds=60)
    log = open(tmp_path / "job.log", "w+")
    job = stream_job(emulator, marked_model[0], subscription, log)
    (hung_id,) = publish(requests, [record(1.0, hang=HANG_CAP_S)])
    took = interrupt_when_hung(job, marked_model[1], DRAIN_S + 30)
    log.seek(0)
    text = log.read()
    print(f"stopped during a hung call in {took:.1f} s (drain time {DRAIN_S:g} s)")
    assert job.returncode == 0 and took < DRAIN_S + 15, text[-3000:]
    assert "1 handed back for redelivery" in text and "Traceback" not in text, text[-3000:]
    assert [m.message_id for m in emulator.pull(subscription, timeout_s=5)] == [hung_id]  # redelivered
    assert all(emulator.pull(emulator.subscription(topic), timeout_s=1) == [] for topic in job.outputs)


def test_ctrl_c_during_a_hung_call_ends_a_batch_job_at_once(marked_model, tmp_path):
    from tests.helpers import write_tfrecord_file

    model_dir, marker = marked_model
    path = write_tfrecord_file(str(tmp_path / "in.tfrecord"),
                               [record(i, hang=HANG_CAP_S if i == 3 else 0.0) for i in range(10)])
    log = open(tmp_path / "job.log", "w+")
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.batch_infer", "--input", path, "--model", model_dir,
         "--output", str(tmp_path / "out"), "--model_timeout_s", "300"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=log, stderr=subprocess.STDOUT, text=True,
        preexec_fn=ctrl_c_reaches_it)
    took = interrupt_when_hung(job, marker, HANG_CAP_S + 30)
    log.seek(0)
    print(f"batch job: Ctrl-C during a {HANG_CAP_S:g} s hung call, exited {job.returncode} after {took:.1f} s")
    assert job.returncode != 0 and took < 15, log.read()[-3000:]
