"""pipelines.stream_infer end to end on Google's Pub/Sub emulator (started by the pubsub_emulator
fixture), on the DirectRunner in streaming mode: every published message comes back exactly once,
as a prediction equal to the Keras model's or as a dead letter with its payload and attributes."""

import json
import time

import numpy as np
import pytest

from models.serving.examples import make_example
from pipelines import stream_infer
from pipelines.options import OptionsError
from pipelines.local import pubsub_prompt_pulls as pubsub_local
from tests.test_batch_infer import expected_outputs, penguin_values

CANCEL_LIMIT_S = 10


def publish_all(topic, messages):
    """[(payload, attributes)] -> their message ids, in order (published and confirmed)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    futures = [publisher.publish(topic, payload, **attributes) for payload, attributes in messages]
    return [f.result(timeout=30) for f in futures]


def collect(emulator, topics, expected, timeout_s=90):
    """Pulls the topics' subscriptions until `expected` messages arrived in all (or the timeout)."""
    got = {topic: [] for topic in topics}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
        for topic in topics:
            got[topic] += emulator.pull(emulator.subscription(topic), timeout_s=0.5)
    time.sleep(1.0)  # anything more (a duplicate) would arrive now
    for topic in topics:
        got[topic] += emulator.pull(emulator.subscription(topic), timeout_s=0.5)
    return [got[topic] for topic in topics]


def start(args):
    return stream_infer.run(args, save_main_session=False, wait=False)


def stop(result):
    """Cancels the stream; returns how long that took. Also closes the local readers now, while
    the emulator runs (an --input_topic read deletes its temporary subscription then)."""
    started = time.monotonic()
    result.cancel()
    took = time.monotonic() - started
    pubsub_local.close_readers()
    return took


def test_json_requests_are_answered_once_each_with_dead_letters_for_the_rest(pubsub_emulator, penguin_model):
    version_dir, keras_model = penguin_model
    emulator = pubsub_emulator
    requests, predictions, errors = (emulator.topic(n) for n in ("requests", "predictions", "errors"))
    values = penguin_values(60, seed=21)
    good = [(json.dumps({"measurements": v["measurements"], "island": v["island"]}).encode(),
             {"id": v["id"], "trace": f"t-{i}"}) for i, v in enumerate(values)]
    bad = {
        "not-json": (b"{nope", {"id": "not-json"}),
        "not-object": (b"[1, 2]", {"id": "not-object"}),
        "short": (json.dumps({"measurements": [1, 2], "island": 1}).encode(), {"id": "short"}),
        "wrong-type": (json.dumps({"measurements": [40, 17, 190, 4000], "island": "one"}).encode(),
                       {"id": "wrong-type"}),
        "missing": (json.dumps({"island": 1}).encode(), {"id": "missing"}),
        "oversized": (json.dumps({"measurements": [40, 17, 190, 4000], "island": 1, "pad": "x" * 3000}).encode(),
                      {"id": "oversized"}),
        "model-error": (json.dumps({"measurements": [40, 17, 190, 4000], "island": 7}).encode(),
                        {"id": "model-error"}),
        "no-key": (json.dumps({"measurements": [40, 17, 190, 4000], "island": 1}).encode(), {"other": "x"}),
    }
    result = start(["--input_subscription", emulator.subscription(requests), "--model", f"clf={version_dir}",
                    "--output_topic", predictions, "--errors_topic", errors, "--payload_format", "json",
                    "--key_attribute", "id", "--max_batch_size", "16", "--max_batch_latency_ms", "50",
                    "--max_payload_bytes", "2000", "--project", emulator.project])
    try:
        # interleave bad messages with good ones, in two bursts
        messages = good[:30] + list(bad.values()) + good[30:]
        ids = publish_all(requests, messages)
        outputs, dead = collect(emulator, [predictions, errors], len(messages))
    finally:
        cancel_s = stop(result)

    assert cancel_s < CANCEL_LIMIT_S
    rows = [json.loads(m.data) for m in outputs]
    assert sorted(r["key"] for r in rows) == sorted(v["id"] for v in values)  # each exactly once
    assert all(m.attributes["key"] == json.loads(m.data)["key"] for m in outputs)
    assert sorted(m.attributes["message_id"] for m in outputs + dead) == sorted(ids)
    expected = expected_outputs(keras_model, values)
    by_key = {r["key"]: r for r in rows}
    for i, v in enumerate(values):
        np.testing.assert_allclose(by_key[v["id"]]["clf"]["probabilities"], expected["probabilities"][i], rtol=1e-6)
        assert by_key[v["id"]]["clf"]["species"] == int(expected["species"][i])

    stages = {(m.attributes.get("id") or "no-key"): m.attributes["error_stage"] for m in dead}
    assert stages == {"not-json": "decode", "not-object": "decode", "short": "convert", "wrong-type": "convert",
                      "missing": "convert", "oversized": "read", "model-error": "infer", "no-key": "convert"}
    for m in dead:  # the original payload and attributes, unchanged, and why
        payload, attributes = bad[m.attributes.get("id") or "no-key"]
        assert m.data == payload
        assert all(m.attributes[k] == v for k, v in attributes.items())
        assert m.attributes["error"] and m.attributes["error_type"]
    model_error = next(m for m in dead if m.attributes.get("id") == "model-error")
    assert model_error.attributes["model"] == "clf" and model_error.attributes["key"] == "model-error"


def test_example_payloads_through_a_graph_keyed_by_message_id(pubsub_emulator, graph_models, prism_available,
                                                              monkeypatch):
    """...on the BundleBasedDirectRunner, named as such, even where Beam's DirectRunner could pick
    Prism (today this stream's GroupIntoBatches timer would keep Beam off Prism; the pin does not
    depend on that)."""
    runners, build = [], stream_infer.build_pipeline
    monkeypatch.setattr(stream_infer, "build_pipeline", lambda p, job: (runners.append(type(p.runner).__name__),
                                                                         build(p, job))[-1])
    emulator = pubsub_emulator
    requests, predictions, errors = (emulator.topic(n) for n in ("ex-requests", "ex-predictions", "ex-errors"))
    xs = [0.5 * i for i in range(12)]
    messages = [(make_example({"x": [x]}).SerializeToString(), {}) for x in xs] + [(b"\x0a\xff garbage", {})]
    result = start(["--input_topic", requests, "--model", f"five={graph_models['five'][0]}",
                    "--model", f"ten={graph_models['ten'][0]}", "--output_topic", predictions,
                    "--errors_topic", errors, "--max_batch_latency_ms", "30", "--with_source",
                    "--project", emulator.project])
    try:
        time.sleep(3)  # --input_topic: the job's own subscription exists once the read has started
        ids = publish_all(requests, messages)
        outputs, dead = collect(emulator, [predictions, errors], len(messages))
    finally:
        cancel_s = stop(result)
    assert cancel_s < CANCEL_LIMIT_S
    assert prism_available == [] and runners == ["BundleBasedDirectRunner"]
    rows = {json.loads(m.data)["key"]: json.loads(m.data) for m in outputs}
    assert set(rows) == set(ids[:12])
    for message_id, x in zip(ids, xs):
        assert rows[message_id]["five"]["y"] == pytest.approx([5 * x]) and rows[message_id]["ten"]["y"] == pytest.approx([10 * x])
        assert rows[message_id]["source"] == {"message_id": message_id}
    assert [(m.attributes["key"], m.attributes["error_stage"], m.data) for m in dead] == [
        (ids[12], "decode", b"\x0a\xff garbage")]


@pytest.mark.parametrize("flags, message", [
    (["--model", "m", "--output_topic", "t", "--errors_topic", "e"], "give one of --input_subscription"),
    (["--input_topic", "projects/p/topics/t", "--model", "m", "--errors_topic", "e"], "--output_topic (or"),
    (["--input_topic", "projects/p/topics/t", "--model", "m", "--output_topic", "o"], "dead letters need a place"),
    (["--input_topic", "projects/p/topics/t", "--model", "m", "--output_topic", "o", "--errors_topic", "e",
      "--payload_format", "xml"], "--payload_format 'xml'"),
    (["--input_topic", "projects/p/topics/t", "--model", "m", "--output_topic", "o", "--errors_topic", "e",
      "--input", "x.tfrecord"], "batch_infer flags"),
    (["--input_topic", "projects/p/topics/t", "--model", "m", "--output_topic", "o", "--errors_topic", "e",
      "--output_format", "parquet"], "--output_format are batch_infer flags"),  # it would write JSON rows
    (["--input_topic", "projects/p/topics/t", "--model", "m", "--output_topic", "o", "--errors_topic", "e",
      "--key_feature", "id", "--num_shards", "2"], "--key_feature, --num_shards are batch_infer flags"),
])
def test_flag_mistakes_are_reported(flags, message, capsys):
    assert stream_infer.main(flags) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(OptionsError):
        stream_infer.run(flags, wait=False)


def test_predictions_and_dead_letters_stream_into_bigquery_tables(pubsub_emulator, bigquery_emulator, penguin_model):
    """Pub/Sub emulator -> stream -> the local BigQuery (streaming inserts): every message is one
    row in the predictions table or one in the errors table, with the Keras model's values."""
    import uuid

    from tests.test_bigquery import emulator_flags

    version_dir, keras_model = penguin_model
    emulator, bigquery = pubsub_emulator, bigquery_emulator
    client = bigquery.client()
    dataset = "s_" + uuid.uuid4().hex[:8]
    client.create_dataset(dataset)
    requests = emulator.topic("bq-requests")
    values = penguin_values(25, seed=5)
    messages = [(json.dumps({"measurements": v["measurements"], "island": v["island"]}).encode(), {"id": v["id"]})
                for v in values] + [(b"{broken", {"id": "broken"})]
    out, errors = f"{bigquery.project}:{dataset}.scored", f"{bigquery.project}:{dataset}.errors"
    result = start(["--input_subscription", emulator.subscription(requests), "--model", f"clf={version_dir}",
                    "--output_table", out, "--errors_table", errors, "--payload_format", "json",
                    "--key_attribute", "id", "--max_batch_latency_ms", "50"] + emulator_flags(bigquery))
    try:
        publish_all(requests, messages)
        deadline = time.monotonic() + 90
        rows, dead = {}, {}
        while time.monotonic() < deadline and len(rows) + len(dead) < len(messages):
            time.sleep(1.0)
            rows, dead = ({r["key"]: r for r in client.query(f"SELECT * FROM `{t.replace(':', '.')}`").result()}
                          if table_exists(client, t) else {} for t in (out, errors))
    finally:
        stop(result)
        from pipelines.local import bigquery_emulator as redirect

        redirect.restore()
        client.delete_dataset(dataset, delete_contents=True)
    assert set(rows) == {v["id"] for v in values}
    assert {k: d["stage"] for k, d in dead.items()} == {"broken": "decode"}
    expected = expected_outputs(keras_model, values)
    for i, v in enumerate(values):
        np.testing.assert_allclose(rows[v["id"]]["clf"]["probabilities"], expected["probabilities"][i], rtol=1e-6)


def table_exists(client, table):
    from google.api_core import exceptions

    try:
        client.get_table(table.replace(":", "."))
        return True
    except exceptions.NotFound:
        return False
