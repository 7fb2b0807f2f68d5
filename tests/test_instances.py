"""Pure conversions: instances -> tf.Example (checked by TensorFlow's own parser), JSON Lines and
CSV text -> instances with line numbers."""

import base64
import csv
import datetime
import decimal
import io
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from models.serving.examples import feature_values, parse_example
from models.serving.feature_spec import Feature
from transforms.sources.instances import (ConversionError, epoch_seconds, instance_key, instance_to_example,
                                  select_fields)
from transforms.sources.text_formats import (CSV, JSONL, TFRECORD, InstanceError, cell_value, format_of_path, iter_csv,
                                             iter_jsonl)

SPEC = (
    Feature("f", "float32"),
    Feature("v", "float32", (2, 2)),
    Feature("i", "int64", default=7),
    Feature("s", "string"),
)


def parsed(serialized, spec=SPEC):
    """What the model would see: TensorFlow's parse_example with the spec."""
    features = {f.name: tf.io.FixedLenFeature(f.shape, {"float32": tf.float32, "int64": tf.int64,
                                                        "string": tf.string}[f.dtype], f.default)
                for f in spec}
    out = tf.io.parse_example(tf.constant([serialized]), features)
    return {k: v.numpy()[0] for k, v in out.items()}


def test_values_are_stored_by_the_spec_dtype_and_parse_in_tensorflow():
    record = instance_to_example({"f": 2, "v": [[1, 2.5], [decimal.Decimal("3.25"), True]],
                                  "i": 4.0, "s": "héllo"}, SPEC)
    out = parsed(record)
    assert out["f"] == 2.0
    np.testing.assert_array_equal(out["v"], [[1.0, 2.5], [3.25, 1.0]])
    assert out["i"] == 4
    assert out["s"] == "héllo".encode()


def test_null_or_missing_uses_the_default_and_a_required_feature_fails_by_name():
    out = parsed(instance_to_example({"f": 1.0, "v": [0, 0, 0, 0], "i": None, "s": "x"}, SPEC))
    assert out["i"] == 7
    with pytest.raises(ConversionError) as e:
        instance_to_example({"v": [0, 0, 0, 0], "s": None}, SPEC)
    assert "'f': required and missing" in str(e.value) and "'s': required and missing" in str(e.value)


@pytest.mark.parametrize("field, value, message", [
    ("f", "1.5", "is not a number"),
    ("f", [1.0, 2.0], "has 2 values, shape [] needs 1"),
    ("v", [1, 2, 3], "has 3 values, shape [2, 2] needs 4"),
    ("v", [1, None, 3, 4], "a list holds a null"),
    ("i", 2.5, "is not a whole number"),
    ("i", 1 << 63, "does not fit in int64"),
    ("i", "3", "is not an integer"),
    ("s", 12, "is not text or bytes"),
    ("s", {"b64": "***"}, "invalid base64"),
    ("s", {"nested": 1}, "is not text or bytes"),
])
def test_a_value_that_does_not_fit_names_the_field_and_the_reason(field, value, message):
    instance = {"f": 1.0, "v": [0, 0, 0, 0], "i": 1, "s": "x", field: value}
    with pytest.raises(ConversionError) as e:
        instance_to_example(instance, SPEC)
    assert f"{field!r}: " in str(e.value) and message in str(e.value)


def test_bytes_and_b64_objects_fill_string_features():
    png = b"\x89PNG\r\n\x1a\n\x00binary"
    for value in (png, {"b64": base64.b64encode(png).decode()}):
        out = parsed(instance_to_example({"f": 0, "v": [0] * 4, "s": value}, SPEC))
        assert out["s"] == png


def test_dates_and_times_are_iso_text_or_epoch_seconds():
    spec = (Feature("when_text", "string"), Feature("when_s", "float32"), Feature("day", "int64"))
    moment = datetime.datetime(2024, 3, 1, 12, 30, 15, tzinfo=datetime.timezone.utc)
    day = datetime.date(2024, 3, 1)
    example = parse_example(instance_to_example(
        {"when_text": moment, "when_s": moment, "day": day}, spec))
    assert feature_values(example, "when_text") == [b"2024-03-01T12:30:15+00:00"]
    assert feature_values(example, "day") == [int(datetime.datetime(2024, 3, 1, tzinfo=datetime.timezone.utc)
                                                  .timestamp())]
    assert feature_values(example, "when_s")[0] == pytest.approx(moment.timestamp(), abs=64)  # float32
    assert epoch_seconds(datetime.datetime(1970, 1, 2)) == 86400.0  # naive is UTC
    assert epoch_seconds(datetime.time(1, 2, 3)) == 3723.0
    with pytest.raises(ConversionError, match="fraction of a second"):
        instance_to_example({"when_text": "x", "when_s": 0, "day": datetime.datetime(2024, 1, 1, 0, 0, 0, 5)},
                            spec)


def test_raw_features_take_bytes_or_nested_numbers():
    spec = (Feature("img", "string", (2, 2), model_dtype="uint8", encoding="raw"),)
    pixels = np.array([[1, 2], [3, 250]], np.uint8)
    for value in (pixels.tobytes(), pixels.tolist()):
        example = parse_example(instance_to_example({"img": value}, spec))
        assert feature_values(example, "img") == [pixels.tobytes()]
    with pytest.raises(ConversionError, match="holds 3 bytes"):
        instance_to_example({"img": b"abc"}, spec)


def test_extra_fields_are_kept_by_their_values_only_when_asked_and_simple():
    instance = {"f": 1, "v": [0] * 4, "s": "x", "id": "r1", "n": [1, 2.5], "flag": True,
                "nested": {"a": 1}, "mixed": [1, "a"], "empty": []}
    assert set(parse_example(instance_to_example(instance, SPEC)).features.feature) == {"f", "v", "s"}
    example = parse_example(instance_to_example(instance, SPEC, keep_extra=True))
    assert set(example.features.feature) == {"f", "v", "s", "id", "n", "flag"}
    assert feature_values(example, "id") == [b"r1"]
    assert feature_values(example, "n") == [1.0, 2.5]
    assert feature_values(example, "flag") == [1]


def test_included_and_excluded_fields_and_keys():
    instance = {"a": 1, "b": 2, "c": 3}
    assert select_fields(instance, included=["c", "a", "zz"]) == {"c": 3, "a": 1}
    assert select_fields(instance, excluded=["b"]) == {"a": 1, "c": 3}
    assert instance_key({"id": 12}, "id") == "12"
    for bad in ({"id": None}, {"id": 1.5}, {"id": True}, {}):
        with pytest.raises(ConversionError, match="key field 'id'"):
            instance_key(bad, "id")


def test_an_instance_must_be_an_object():
    with pytest.raises(ConversionError, match="an object of fields"):
        instance_to_example([1, 2], SPEC)


def test_formats_by_suffix():
    assert [format_of_path(p) for p in ("a.jsonl", "b.JSON.gz", "c.ndjson", "d.csv", "e.csv.bz2",
                                        "f.tfrecord", "g.tfrecord.gz", "h")] == [
        JSONL, JSONL, JSONL, CSV, CSV, TFRECORD, TFRECORD, TFRECORD]


def test_json_lines_keep_their_line_numbers_and_bad_lines_are_errors():
    lines = [b'{"a": 1}\n', b"\n", b"  \r\n", b"{broken\n", b"[1, 2]\n", b'{"b": "x"}']
    items = list(iter_jsonl(lines))
    assert [number for number, _, _ in items] == [1, 4, 5, 6]
    assert items[0][1] == {"a": 1} and items[3][1] == {"b": "x"}
    assert isinstance(items[1][1], InstanceError) and items[1][1].stage == "decode"
    assert "line 4: not valid JSON" in str(items[1][1]) and items[1][2] == b"{broken"
    assert "a JSON list, expected an object" in str(items[2][1])


CSV_SPEC = (Feature("x", "float32"), Feature("n", "int64"), Feature("vec", "float32", (3,)),
            Feature("name", "string"))


def test_csv_cells_are_read_by_the_spec_and_other_columns_stay_text():
    text = (b'id,x,n,vec,name\n'
            b'r1,1.5,3,"[1, 2, 3]",plain\n'
            b'\n'
            b'r2,,true,"[0,0,0]","two\nlines"\n'
            b'007,2,4.0,"[1,1,1]",z\n')
    items = list(iter_csv(text.splitlines(keepends=True), CSV_SPEC))
    assert [number for number, _, _ in items] == [2, 4, 6]
    assert items[0][1] == {"id": "r1", "x": 1.5, "n": 3, "vec": [1, 2, 3], "name": "plain"}
    assert items[1][1] == {"id": "r2", "x": None, "n": True, "vec": [0, 0, 0], "name": "two\nlines"}
    assert items[2][1]["id"] == "007" and items[2][1]["n"] == 4.0


def test_bad_csv_rows_are_errors_with_their_line_and_fields():
    text = b'id,x,n,vec,name\nr1,1,2\nr2,abc,x,"[1,2]",ok\nr3,1,2,"not a list",ok\n'
    items = list(iter_csv(text.splitlines(keepends=True), CSV_SPEC))
    assert [(n, e.stage) for n, e, _ in items] == [(2, "decode"), (3, "convert"), (4, "convert")]
    assert "line 2: 3 cells, the header has 5" in str(items[0][1])
    assert "'x': 'abc' is not a number" in str(items[1][1]) and "'n': 'x' is not an integer" in str(items[1][1])
    assert items[1][1].fields["id"] == "r2" and items[1][2] == b'r2,abc,x,"[1,2]",ok'
    assert "'vec': 3 values are needed as a JSON list" in str(items[2][1])
    header_repeat = list(iter_csv([b"a,a\n", b"1,2\n"], CSV_SPEC))
    assert len(header_repeat) == 1 and "repeats columns ['a']" in str(header_repeat[0][1])


def test_iso_date_time_text_fills_numeric_features_as_epoch_seconds():
    """BigQuery's DATETIME arrives as text in DIRECT_READ rows ('2024-02-29T13:14:15.123456')."""
    spec = (Feature("t", "float32"), Feature("d", "int64"), Feature("s", "string"))
    example = parse_example(instance_to_example({"t": "1970-01-02T00:00:30.5", "d": "1970-01-03",
                                                 "s": "1970-01-03"}, spec))
    assert feature_values(example, "t") == [86430.5]
    assert feature_values(example, "d") == [2 * 86400]
    assert feature_values(example, "s") == [b"1970-01-03"]
    for text in ("19700103", "1970-01-03+01:00", "1.5"):
        with pytest.raises(ConversionError):
            instance_to_example({"t": 0, "d": text, "s": "x"}, spec)


LIST_SPEC = (Feature("vec", "float32", (3,)), Feature("one", "float32", (1,)),
             Feature("tags", "int64", varlen=True), Feature("words", "string", varlen=True),
             Feature("pair", "string", (2,)), Feature("n", "int64"), Feature("name", "string"))
LIST_RECORDS = [
    {"id": "a", "vec": [1.5, -2, 3], "one": [0.25], "tags": [4, 1, 7, 0], "words": ["x", "y z"],
     "pair": ["p", "q"], "n": [9], "name": "plain"},
    {"id": "b", "vec": [0, 0, 1e3], "one": 2, "tags": [], "words": ["only"], "pair": ["-", "é"],
     "n": 3, "name": "[not, a list]"},
    {"id": "c", "vec": [[1], [2], [3]], "one": [[5]], "tags": [True, 12], "words": [], "pair": ["1", "2"],
     "n": 0, "name": "z"},  # an empty cell is a null
]


def csv_cell(value):
    """A value as a CSV cell the way the README writes one: lists as JSON text, scalars as text."""
    return json.dumps(value) if isinstance(value, list) else str(value)


def test_csv_list_cells_give_the_examples_json_lines_give():
    header = list(LIST_RECORDS[0])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(
        [header] + [[csv_cell(r[name]) for name in header] for r in LIST_RECORDS])
    csv_items = list(iter_csv(out.getvalue().encode().splitlines(keepends=True), LIST_SPEC))
    jsonl_items = list(iter_jsonl([json.dumps(r).encode() + b"\n" for r in LIST_RECORDS]))
    assert len(csv_items) == len(jsonl_items) == 3
    for record, (_, from_csv, _), (_, from_jsonl, _) in zip(LIST_RECORDS, csv_items, jsonl_items):
        assert not isinstance(from_csv, InstanceError), from_csv
        example = parse_example(instance_to_example(from_csv, LIST_SPEC))
        assert example == parse_example(instance_to_example(from_jsonl, LIST_SPEC))
        assert feature_values(example, "tags") == [int(t) for t in record["tags"]]
        assert feature_values(example, "words") == [w.encode() for w in record["words"]]
        assert feature_values(example, "pair") == [w.encode() for w in record["pair"]]
        assert feature_values(example, "vec") == pytest.approx(np.ravel(record["vec"]).tolist())
    name = parse_example(instance_to_example(csv_items[1][1], LIST_SPEC)).features.feature["name"]
    assert name.bytes_list.value == [b"[not, a list]"]  # a string of shape [] keeps its text


@pytest.mark.parametrize("text, feature, expected", [
    ("[4, 1, 7, 0]", Feature("t", "int64", varlen=True), [4, 1, 7, 0]),
    ("5", Feature("t", "int64", varlen=True), 5),
    ("[]", Feature("t", "int64", varlen=True), []),
    (" [2.5]", Feature("x", "float32"), [2.5]),
    ('["a", "b"]', Feature("w", "string", varlen=True), ["a", "b"]),
    ("[draft] notes", Feature("w", "string", varlen=True), "[draft] notes"),
    ('["a"]', Feature("s", "string"), '["a"]'),
])
def test_cell_values_of_list_capable_features(text, feature, expected):
    assert cell_value(text, feature) == expected


@pytest.mark.parametrize("text, feature, message", [
    ("[4, 1", Feature("t", "int64", varlen=True), "'[4, 1' is not a JSON list of numbers"),
    ("[1, 2]x", Feature("x", "float32", (2,)), "is not a JSON list of numbers"),
    ("abc", Feature("t", "int64", varlen=True), "'abc' is not an integer"),
    ("a", Feature("p", "string", (2,)), "2 values are needed as a JSON list"),
])
def test_bad_list_cells_are_conversion_errors(text, feature, message):
    with pytest.raises(ConversionError, match=re.escape(message)):
        cell_value(text, feature)


@pytest.mark.parametrize("cell, stored", [
    ('{"b64": "/5Q="}', b"\xff\x94"),  # bytes that are not UTF-8, as JSON Lines writes them
    ('{"b64": "/5Q=", "note": 1}', b'{"b64": "/5Q=", "note": 1}'),  # any other object is text
    ("{not json", b"{not json"),
])
def test_a_csv_string_cell_takes_bytes_as_a_b64_object_as_json_lines_does(cell, stored):
    spec = (Feature("s", "string"),)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["s"], [cell]])
    ((_, instance, _),) = list(iter_csv(out.getvalue().encode().splitlines(keepends=True), spec))
    example = parse_example(instance_to_example(instance, spec))
    assert example.features.feature["s"].bytes_list.value == [stored]
    if stored == b"\xff\x94":
        (_, from_json, _), = list(iter_jsonl([json.dumps({"s": {"b64": "/5Q="}}).encode() + b"\n"]))
        assert parse_example(instance_to_example(from_json, spec)) == example
