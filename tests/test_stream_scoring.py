"""The streaming logic without Pub/Sub: pure message conversion (transforms.sources.messages,
transforms.sinks.messages), and
ScoreMessages on Beam's TestStream (streaming DirectRunner): batches close at max_batch_size or
after max_batch_latency_s of processing time, and every message ends as one prediction or one
dead letter carrying its payload and attributes."""

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from models.serving.examples import make_example
from models.serving.feature_spec import Feature
from models.serving.model import load_serving_model
from transforms.graph.model import parallel_graph, record_spec
from transforms.scoring.stream import ScoreMessages
from transforms.sinks.messages import MAX_ATTRIBUTE_BYTES, dead_letter_message, prediction_message
from transforms.sources.messages import MessageError, message_id_of, message_to_record
from transforms.sources.pubsub import BatchRecords

SPEC = (Feature("measurements", "float32", (4,)), Feature("island", "int64", (), default=0))


# --- pure conversion ------------------------------------------------------------------------

def test_json_payload_becomes_the_example_the_spec_describes():
    import tensorflow as tf

    record = message_to_record(b'{"measurements": [1, 2, 3, 4], "island": 2, "note": "kept"}', {"id": "a"},
                               "m1", SPEC, "json", key_attribute="id")
    assert (record.message_id, record.key, record.attributes) == ("m1", "a", {"id": "a"})
    parsed = tf.io.parse_single_example(record.example, {
        "measurements": tf.io.FixedLenFeature([4], tf.float32), "island": tf.io.FixedLenFeature([], tf.int64)})
    assert parsed["measurements"].numpy().tolist() == [1, 2, 3, 4] and int(parsed["island"]) == 2


def test_example_payloads_pass_unchanged_and_the_key_defaults_to_the_message_id():
    payload = make_example({"measurements": [1.0, 2.0, 3.0, 4.0]}).SerializeToString()
    record = message_to_record(payload, None, "m2", SPEC)
    assert (record.key, record.example, record.payload) == ("m2", payload, payload)


@pytest.mark.parametrize("payload, attributes, stage, key", [
    (b"{nope", {"id": "k"}, "decode", "k"),
    (b'["a list"]', {"id": "k"}, "decode", "k"),
    (b'{"measurements": [1, 2], "island": 1}', {"id": "k"}, "convert", "k"),
    (b'{"measurements": [1, 2, 3, 4], "island": "one"}', {"id": "k"}, "convert", "k"),
    (b'{"island": 1}', {"id": "k"}, "convert", "k"),
    (b'{"measurements": [1, 2, 3, 4]}', {}, "convert", None),  # no key attribute
    (b'{"measurements": [1, 2, 3, 4], "pad": "' + b"x" * 100 + b'"}', {"id": "k"}, "read", "k"),
])
def test_bad_messages_raise_with_their_stage_and_key(payload, attributes, stage, key):
    with pytest.raises(MessageError) as raised:
        message_to_record(payload, attributes, "m", SPEC, "json", key_attribute="id", max_payload_bytes=100)
    assert (raised.value.stage, raised.value.key) == (stage, key)


def test_message_ids_when_a_runner_gives_none_are_stable_digests():
    assert message_id_of("123", b"x", {}) == "123"
    first = message_id_of(None, b"payload", {"b": "2", "a": "1"})
    assert first == message_id_of("", b"payload", {"a": "1", "b": "2"}) and first.startswith("sha256:")
    assert first != message_id_of(None, b"payload", {"a": "1"})


def test_dead_letter_messages_keep_payload_and_attributes_and_fit_pubsub_limits():
    row = {"stage": "convert", "error_type": "ConversionError", "error": "é" * 2000, "key": "k7", "model": None}
    data, attributes = dead_letter_message(row, b"\x00raw", {"id": "k7", "trace": "t"}, "m7")
    assert data == b"\x00raw"
    assert attributes["id"] == "k7" and attributes["trace"] == "t" and attributes["message_id"] == "m7"
    assert (attributes["error_stage"], attributes["error_type"], attributes["key"]) == (
        "convert", "ConversionError", "k7")
    assert "model" not in attributes
    assert len(attributes["error"].encode()) <= MAX_ATTRIBUTE_BYTES and attributes["error"].endswith("...")


def test_prediction_messages_carry_key_and_message_id():
    data, attributes = prediction_message({"key": "k1", "clf": {"y": [1.5]}}, "m1")
    assert data == b'{"key":"k1","clf":{"y":[1.5]}}'
    assert attributes == {"key": "k1", "message_id": "m1"}


# --- ScoreMessages on TestStream ---------------------------------------------------------------

def message(x, message_id, **attributes):
    return PubsubMessage(make_example({"x": [x]}).SerializeToString(), attributes, message_id=message_id)


def timed_stream(groups, latency_s):
    """TestStream: each group of elements followed by a processing-time advance of 10 x latency.

    As in Beam's own GroupIntoBatches tests, the batching timers read a clock frozen at 0 while
    TestStream advances the runner's processing time from 0: a batch's timer is due `latency_s`
    after the start, so it fires at the first advance after the batch began."""
    stream = TestStream()
    for group in groups:
        stream = stream.add_elements(group).advance_processing_time(10 * latency_s)
    return stream.advance_watermark_to_infinity()


def streaming_pipeline():
    return beam.Pipeline(options=PipelineOptions(["--streaming"]))


def batches_of(groups, max_batch_size, latency_s):
    return (timed_stream(groups, latency_s)
            | BatchRecords(max_batch_size, latency_s, clock=lambda: 0.0)
            | beam.Map(lambda sharded: sorted(sharded[1])))


def test_a_trickle_is_batched_per_latency_window_not_held_for_a_full_batch():
    # three groups of 3, each followed by a wait: room for 100 per batch, so only the latency
    # bound closes them (without it: one batch of 9 when the stream ends)
    with streaming_pipeline() as p:
        batches = p | batches_of([[0, 1, 2], [3, 4, 5], [6, 7, 8]], max_batch_size=100, latency_s=0.5)
        assert_that(batches, equal_to([[0, 1, 2], [3, 4, 5], [6, 7, 8]]))


def test_a_burst_is_split_at_max_batch_size():
    with streaming_pipeline() as p:
        sizes = p | batches_of([list(range(10))], max_batch_size=4, latency_s=30) | beam.Map(len)
        assert_that(sizes, equal_to([4, 4, 2]))


def run_stream(graph, groups, max_batch_size, latency_s, key_attribute=None):
    p = streaming_pipeline()
    out = p | timed_stream(groups, latency_s) | ScoreMessages(
        graph, record_spec(graph), max_batch_size=max_batch_size, max_batch_latency_s=latency_s,
        key_attribute=key_attribute, clock=lambda: 0.0)
    rows = out.main | "Rows" >> beam.Map(lambda pred: (pred.row["key"], pred.message_id, pred.row["five"]["y"]))
    dead = out.dead_letters | "Dead" >> beam.Map(
        lambda d: (d.row["key"], d.message_id, d.row["stage"], d.payload, d.attributes))
    return p, rows, dead


@pytest.fixture(scope="module")
def five_graph(graph_models):
    return parallel_graph([load_serving_model(graph_models["five"][0], "five")])


def test_every_message_ends_as_one_prediction_or_one_dead_letter(five_graph):
    # 8 messages in, over two latency windows and batches of at most 3: 6 rows + 2 dead letters,
    # each matched to its message by id and key (Beam's streaming DirectRunner may not report the
    # metrics of the last bundles before the run ends, so this counts outputs, not counters)
    good = [message(float(i), f"g{i}", id=f"k{i}") for i in range(6)]
    garbage = PubsubMessage(b"\x0a\xff not an example", {"id": "bad", "trace": "t1"}, message_id="b1")
    wrong = PubsubMessage(make_example({"x": ["text"]}).SerializeToString(), {"id": "wrong"}, message_id="b2")
    p, rows, dead = run_stream(five_graph, [good[:3] + [garbage], [wrong] + good[3:]], max_batch_size=3,
                               latency_s=0.5, key_attribute="id")
    assert_that(rows, equal_to([(f"k{i}", f"g{i}", [5.0 * i]) for i in range(6)]), label="rows")
    assert_that(dead, equal_to([
        ("bad", "b1", "decode", garbage.data, {"id": "bad", "trace": "t1"}),
        ("wrong", "b2", "validate", wrong.data, {"id": "wrong"}),
    ]), label="dead")
    p.run().wait_until_finish()
