"""Bridged records and graph rows as pure functions."""

import json

import numpy as np
import pytest
import tensorflow as tf

from models.serving.examples import make_example
from models.serving.feature_spec import Feature
from tests.helpers import row_lines
from transforms.graph.bridges import BridgeError, bridged_record
from transforms.records.chunk import ModelResult
from transforms.records.rows import outputs_to_json


def test_a_bridged_record_keeps_the_original_features_and_replaces_same_named_ones():
    original = make_example({"x": [1.0, 2.0], "island": 2, "id": "k"}).SerializeToString()
    specs = {"x": Feature("x", "float32", (2,)), "label": Feature("label", "string", ())}
    merged = bridged_record(original, {"x": np.float32([7.0, 8.0]), "label": np.asarray(b"yes", object)}, specs)
    parsed = tf.io.parse_example([merged], {
        "x": tf.io.FixedLenFeature([2], tf.float32), "island": tf.io.FixedLenFeature([], tf.int64),
        "id": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.string)})
    assert parsed["x"].numpy().tolist() == [[7.0, 8.0]]
    assert parsed["island"].numpy().tolist() == [2] and parsed["id"].numpy().tolist() == [b"k"]
    assert parsed["label"].numpy().tolist() == [b"yes"]


@pytest.mark.parametrize("value, spec, message", [
    (np.float32([1, 2, 3]), Feature("x", "float32", (2,)), "needs 2 values, the output has 3"),
    (np.float32([1]), Feature("x", "int64", ()), "stores int64; the output holds float32"),
])
def test_values_that_do_not_fit_a_feature_are_refused(value, spec, message):
    with pytest.raises(BridgeError, match=message.replace("(", r"\(")):
        bridged_record(b"", {"x": value}, {"x": spec})


def expected_row(key, per_model, i):
    row = {"key": key}
    for name, result in per_model.items():
        if i in result.indices:
            j = result.indices.index(i)
            row[name] = outputs_to_json({k: v[j] for k, v in result.outputs.items()})
    return row


def test_rows_of_a_partially_scored_chunk_equal_rows_built_value_by_value():
    keys = ['a"1', "b,2", "c\\3", "d"]
    models = {
        "five": ModelResult([0, 1, 2, 3], {"y": np.float32([[0.1], [0.2], [np.nan], [0.4]]),
                                           "z": np.int64([1, 2, 3, 4])}),
        "labels": ModelResult([1, 3], {"label": np.asarray([b"x", "\xff".encode("latin-1")], object)}),
    }
    lines = row_lines(keys, models)
    assert [json.loads(line) for line in lines] == [expected_row(k, models, i) for i, k in enumerate(keys)]
    assert json.loads(lines[2])["five"]["y"] == ["NaN"] and "labels" not in json.loads(lines[2])


def test_row_per_model_and_passthrough_rows():
    keys = ["a", "b"]
    records = [make_example({"id": "first", "v": [1, 2]}).SerializeToString(), b"\x0a\xff"]
    models = {"m": ModelResult([0, 1], {"y": np.float32([1.5, 2.5])}),
              "n": ModelResult([1], {"y": np.float32([3.5])})}
    lines = [json.loads(line) for line in row_lines(keys, models, records, ["id", "v"], {"id": True},
                                                      row_per_model=True)]
    assert lines == [
        {"key": "a", "model": "m", "outputs": {"y": 1.5}, "inputs": {"id": "first", "v": [1, 2]}},
        {"key": "b", "model": "m", "outputs": {"y": 2.5}, "inputs": {"id": None, "v": None}},
        {"key": "b", "model": "n", "outputs": {"y": 3.5}, "inputs": {"id": None, "v": None}}]


def test_one_model_that_scored_part_of_a_chunk_keys_each_row_by_its_own_record():
    keys = ["a", "b", "c", "d", "e"]
    models = {"m": ModelResult([0, 2, 3], {"y": np.float32([[1.0], [3.0], [4.0]])})}
    rows = [json.loads(line) for line in row_lines(keys, models)]
    assert rows == [{"key": "a", "m": {"y": [1.0]}}, {"key": "c", "m": {"y": [3.0]}}, {"key": "d", "m": {"y": [4.0]}}]
    everyone = {"m": ModelResult([0, 1, 2, 3, 4], {"y": np.float32([[i] for i in range(5)])})}
    assert [json.loads(line)["key"] for line in row_lines(keys, everyone)] == keys
