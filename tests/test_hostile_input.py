"""No single record may crash a job: hostile and odd inputs (deep, wide, overflowing, garbage) end
as that record's dead letter, never as an exception that stops the others. The converters are
fuzzed with hypothesis (JSON instances, CSV text, Pub/Sub payloads, tf.Example bytes through the
real executor and a real model); the deep-JSON probe also runs as a whole batch job."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.serving.examples import make_example
from models.serving.feature_spec import Feature
from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.test_batch_infer import penguin_values
from transforms.graph.model import parallel_graph
from transforms.records.chunk import RecordChunk
from transforms.scoring.engines import batch_calls
from transforms.scoring.executor import score_chunk
from transforms.sources.instances import MAX_NESTING, ConversionError, instance_to_example
from transforms.sources.messages import JSON, MessageError, message_to_record
from transforms.sources.text import InstanceOptions, keyed_examples
from transforms.sources.text_formats import InstanceError, iter_csv

SPEC = (Feature("f", "float32"), Feature("v", "float32", (2,)), Feature("i", "int64", default=0),
        Feature("s", "string", default=b""))
RAW_SPEC = SPEC + (Feature("img", "string", (2, 2), model_dtype="uint8", encoding="raw"),)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nested(depth, leaf=1.0):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_json_line(depth=950):
    """A 2 KB JSON line (under orjson's own nesting limit) that used to raise RecursionError."""
    return json.dumps({"id": "deep", "f": 1.0, "v": nested(depth)})


# --- the probes ---------------------------------------------------------------------------------

def test_a_deeply_nested_value_is_a_conversion_error_naming_the_field():
    with pytest.raises(ConversionError, match=rf"'v': lists nested deeper than {MAX_NESTING} levels"):
        instance_to_example(json.loads(deep_json_line()), SPEC)


def test_a_deep_json_line_is_one_dead_letter_and_the_lines_after_it_are_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([deep_json_line(), json.dumps({"id": "ok", "f": 2, "v": [1, 2]})]) + "\n")
    out = list(keyed_examples(str(path), "in.jsonl", "jsonl", InstanceOptions(SPEC, key_field="id")))
    (line1, key1, dead, _), (line2, key2, example, _) = out
    assert (line1, key1, dead["stage"], dead["error_type"]) == (1, "deep", "convert", "ConversionError")
    assert "nested deeper" in dead["error"] and (line2, key2) == (2, "ok") and isinstance(example, bytes)


def test_a_deep_pubsub_payload_is_a_convert_dead_letter():
    payload = json.dumps({"f": 1.0, "v": nested(950), "extra": nested(950)}).encode()
    with pytest.raises(MessageError) as caught:
        message_to_record(payload, {}, "m-1", SPEC, JSON)
    assert caught.value.stage == "convert" and "'v'" in str(caught.value) and "'extra'" in str(caught.value)


def test_a_batch_job_with_a_deep_line_finishes_and_accounts_for_every_line(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    values = penguin_values(20, seed=8)
    deep = json.dumps({"id": "deep", "measurements": nested(950), "island": 1})
    (tmp_path / "in.jsonl").write_text("\n".join([json.dumps(v) for v in values[:10]] + [deep]
                                                 + [json.dumps(v) for v in values[10:]]) + "\n")
    out = str(tmp_path / "out" / "pred")
    _, counters = batch_infer.run(["--input", str(tmp_path / "in.jsonl"), "--model", version_dir,
                                   "--output", out, "--key_feature", "id"])
    assert (counters["records_read"], counters["predictions_written"], counters["dead_letters_convert"]) == (
        21, 20, 1)
    assert [r["key"] for r in read_jsonl(out + ".errors-*.jsonl")] == ["deep"]
    assert not [d for d in os.listdir(tmp_path / "out") if d.startswith("beam-temp")]


def test_a_csv_header_with_a_byte_order_mark_is_read_as_utf8_sig():
    lines = ["\ufeffid,f,v\n".encode("utf-8"), b'a,1.5,"[1, 2]"\n']
    ((line, instance, _),) = list(iter_csv(lines, SPEC))
    assert line == 2 and instance == {"id": "a", "f": 1.5, "v": [1, 2]}


@pytest.mark.parametrize("instance, message", [
    ({"f": 1e39, "v": [1, 2]}, "'f': float 1e+39 overflows float32"),
    ({"f": 10 ** 400, "v": [1, 2]}, "'f': int "),
    ({"f": 1.0, "v": [1, -1e39]}, "'v': float -1e+39 overflows float32"),
    ({"f": 1.0, "v": [1, 2], "i": 2 ** 63}, "'i': 9223372036854775808 does not fit in int64"),
    ({"f": 1.0, "v": [1, 2], "count": 2 ** 64}, "'count': 18446744073709551616 does not fit in int64"),
])
def test_numbers_that_do_not_fit_are_conversion_errors_naming_the_field(instance, message):
    with pytest.raises(ConversionError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        instance_to_example(instance, SPEC, keep_extra=True)


def test_a_raw_feature_refuses_numbers_its_model_dtype_cannot_hold():
    good = {"f": 1.0, "v": [1, 2], "img": [[1, 2], [3, 255]]}
    assert isinstance(instance_to_example(good, RAW_SPEC), bytes)
    with pytest.raises(ConversionError, match="^'img': 300.0 does not fit uint8"):
        instance_to_example({**good, "img": [[1, 2], [3, 300]]}, RAW_SPEC)


def test_infinities_and_nan_given_as_such_are_values():
    record = instance_to_example({"f": float("inf"), "v": [float("nan"), -float("inf")]}, SPEC)
    assert isinstance(record, bytes)


# --- fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.integers(min_value=0, max_value=1200).map(nested),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40)
instances = st.dictionaries(st.sampled_from(["f", "v", "i", "s", "img", "id", "extra"]) | st.text(max_size=8),
                            json_values, max_size=8)


@FUZZ
@given(instances)
def test_fuzz_json_instances_convert_or_fail_with_a_conversion_error(instance):
    for spec in (SPEC, RAW_SPEC):
        try:
            assert isinstance(instance_to_example(instance, spec, keep_extra=True), bytes)
        except ConversionError:
            pass


@FUZZ
@given(st.lists(st.text(max_size=60), min_size=1, max_size=6), st.booleans())
def test_fuzz_csv_text_reads_as_instances_or_dead_letters(rows, bom):
    header = ("\ufeff" if bom else "") + "id,f,v,i,s"
    lines = [(line + "\n").encode("utf-8") for line in [header] + rows]
    for number, item, raw in iter_csv(lines, SPEC):
        assert isinstance(number, int) and isinstance(raw, bytes)
        if isinstance(item, InstanceError):
            continue
        assert set(item) == {"id", "f", "v", "i", "s"}  # the BOM is never part of a column name
        try:
            instance_to_example(item, SPEC, keep_extra=True)
        except ConversionError:
            pass


@FUZZ
@given(st.binary(max_size=200) | instances.map(lambda i: json.dumps(i, default=str).encode()),
       st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
       st.sampled_from(["json", "example"]))
def test_fuzz_pubsub_payloads_are_records_or_message_errors(payload, attributes, payload_format):
    try:
        record = message_to_record(payload, attributes, "m-1", SPEC, payload_format, max_payload_bytes=10_000)
        assert record.message_id == "m-1"
    except MessageError as e:
        assert e.stage in ("read", "decode", "convert")


@pytest.fixture(scope="module")
def penguin_calls(penguin_model):
    from models.serving.model import load_serving_model

    graph = parallel_graph([load_serving_model(penguin_model[0], name="clf")], "fast")
    return graph, batch_calls(graph)


def mutated(data: bytes, position: int, byte: int) -> bytes:
    if not data:
        return bytes([byte])
    position %= len(data)
    return data[:position] + bytes([byte]) + data[position + 1:]


good_records = st.builds(lambda v: make_example(v).SerializeToString(),
                         st.builds(lambda i, m, island: {"id": f"p{i}", "measurements": m, "island": island},
                                   st.integers(0, 10 ** 6), st.lists(st.floats(-1e6, 1e6, width=32), min_size=4,
                                                                      max_size=4), st.integers(0, 2)))
records = st.lists(good_records | st.binary(max_size=120)
                   | st.tuples(good_records, st.integers(0, 500), st.integers(0, 255)).map(lambda t: mutated(*t)),
                   min_size=1, max_size=24)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(records)
def test_fuzz_tf_example_bytes_each_end_as_one_prediction_or_one_dead_letter(penguin_calls, chunk_records):
    graph, calls = penguin_calls
    keys = [f"k{i}" for i in range(len(chunk_records))]
    sources = [{"file": "fuzz", "record": i} for i in range(len(chunk_records))]
    scored = score_chunk(graph, calls, RecordChunk(keys, chunk_records, sources), "id")
    predicted = set(scored.row_positions())
    dead_positions = [row["source"]["record"] for row in scored.dead]
    assert len(dead_positions) == len(set(dead_positions)) and not predicted & set(dead_positions)
    assert predicted | set(dead_positions) == set(range(len(chunk_records)))


def test_a_word_where_numbers_belong_is_not_a_number_in_json_and_in_csv(tmp_path):
    spec = (Feature("vec", "float32", (6,)),)
    with pytest.raises(ConversionError, match=r"^'vec': str 'abc' is not a number$"):
        instance_to_example({"vec": "abc"}, spec)
    (tmp_path / "in.jsonl").write_text('{"vec": "abc"}\n')
    (tmp_path / "in.csv").write_text('vec\nabc\n')
    options = InstanceOptions(spec)
    (_, _, from_json, _), = keyed_examples(str(tmp_path / "in.jsonl"), "in.jsonl", "jsonl", options)
    (_, _, from_csv, _), = keyed_examples(str(tmp_path / "in.csv"), "in.csv", "csv", options)
    assert from_json["stage"] == from_csv["stage"] == "convert"
    assert from_json["error_type"] == from_csv["error_type"] == "ConversionError"
