"""The conformance matrix's checkers: one reader per sink, with the standard reader a user would
use, and one check that every sink's output must pass.

Readers (each returns {key: {model: {output: value}}}; a row without its key raises):
- JSON Lines: json;  Parquet: pyarrow AND pandas (both must read it and agree);
- PredictionLogs: tf.data + tensorflow_serving's PredictionLog (the key from the request's example,
  or, for a signature of tensors, from the record whose values the request holds);
- examples: tf.data + tf.train.Example (the key from the `id` feature);
- BigQuery: the google.cloud.bigquery client;  Pub/Sub: the rows published as JSON messages.
Dead letters: the JSON Lines dead-letter files, the errors table or the errors topic, each as
[{"key", "stage", "model"}].

`check_outputs` then compares every value with the models' signatures called directly on the
same records (tests/matrix/models.py), checks that every record's key is there, and checks count
conservation: per model, records in = rows holding its outputs + dead letters naming it. A bool
output must read back as bools, except from the sinks that document them as ints
(INT64_BOOL_SINKS).
"""

import base64
import glob
import json
from typing import Any, Dict, List, Optional

import numpy as np

from tests.matrix.records import KEY

ROW_FIELDS = ("key", "inputs", "source", "model_versions", "message_id")
INT64_BOOL_SINKS = ("examples",)  # docs/sinks.md: bools as int64_list, as BulkInferrer stores them
Rows = Dict[str, Dict[str, Dict[str, Any]]]


class MissingKey(AssertionError):
    """An output record that does not carry its input record's key."""


def _files(pattern: str) -> List[str]:
    paths = sorted(glob.glob(pattern))
    assert paths, f"no output files match {pattern}"
    return paths


def _keyed(rows: List[dict]) -> Rows:
    out = {}
    for row in rows:
        if not row.get("key"):
            raise MissingKey(f"a row without its key: {str(row)[:200]}")
        assert row["key"] not in out, f"key {row['key']!r} written twice"
        out[row["key"]] = {name: value for name, value in row.items()
                           if name not in ROW_FIELDS and value is not None}
    return out


def read_jsonl_rows(prefix: str) -> Rows:
    rows = []
    for path in _files(prefix + "-*.jsonl"):
        with open(path, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return _keyed(rows)


def read_parquet_rows(prefix: str) -> Rows:
    """pyarrow's rows; pandas must read the same file and give the same keys and values."""
    import pandas as pd
    import pyarrow.parquet as pq

    paths = _files(prefix + "-*.parquet")
    arrow = _keyed(pq.read_table(paths).to_pylist())
    frame = pd.concat([pd.read_parquet(path) for path in paths])
    from_pandas = _keyed([{name: _plain(value) for name, value in record.items()}
                          for record in frame.to_dict("records")])
    assert from_pandas.keys() == arrow.keys(), "pandas and pyarrow read different keys"
    for key, models in arrow.items():
        assert from_pandas[key] == models, f"pandas vs pyarrow, {key}: {from_pandas[key]} != {models}"
    return arrow


def _plain(value: Any) -> Any:
    """pandas' numpy arrays and nested dicts as plain Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return None if isinstance(value, float) and np.isnan(value) else value


def _example_key(serialized: bytes) -> Optional[str]:
    import tensorflow as tf

    values = tf.train.Example.FromString(serialized).features.feature[KEY].bytes_list.value
    return values[0].decode("utf-8") if values else None


def _tensor_request_key(request, records: List[dict]) -> Optional[str]:
    """The key of the record whose values a request of tensors holds (a signature of tensors
    logs its inputs, and the key is not one of them): the record of the same text and f_vec."""
    import tensorflow as tf

    text = tf.make_ndarray(request.inputs["text"]).reshape(-1)[0]
    vec = tf.make_ndarray(request.inputs["f_vec"]).reshape(-1).tolist()
    matches = [r[KEY] for r in records if r["text"].encode("utf-8") == text
               and np.allclose(np.float32(r["f_vec"]), vec, rtol=0, atol=0)]
    assert len(set(matches)) <= 1, f"two records hold the request's values: {matches}"
    return matches[0] if matches else None


def read_prediction_logs(prefix: str, model: str, records: List[dict]) -> Rows:
    """PredictionLogs: each log's key is the `id` of the example in its request, or, where the
    request holds tensors, the key of the record that holds its values."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    rows = []
    for path in _files(prefix + "-*.tfrecord*"):
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            inputs = log.predict_log.request.inputs
            key = _tensor_request_key(log.predict_log.request, records) if "f_vec" in inputs else \
                _example_key(next(iter(inputs.values())).string_val[0])
            outputs = {name: tf.make_ndarray(tensor)[0] for name, tensor in log.predict_log.response.outputs.items()}
            rows.append({"key": key, model: outputs})
    return _keyed(rows)


def read_examples(prefix: str, model: str, outputs: List[str]) -> Rows:
    """Output tf.Examples: the key from `id`, each output a feature of its own name."""
    import tensorflow as tf

    rows = []
    for path in _files(prefix + "-*.tfrecord*"):
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            example = tf.train.Example.FromString(record.numpy())
            rows.append({"key": _example_key(record.numpy()),
                         model: {name: _feature_values(example.features.feature[name])
                                 for name in outputs if name in example.features.feature}})
    return _keyed(rows)


def _feature_values(feature) -> List[Any]:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def read_bigquery_rows(client, table: str) -> Rows:
    return _keyed([dict(row) for row in client.query(f"SELECT * FROM `{table.replace(':', '.')}`").result()])


def read_bigquery_dead(client, table: str) -> List[dict]:
    """The errors table's dead letters; a job without dead letters may not create the table."""
    from google.api_core import exceptions

    try:
        client.get_table(table.replace(":", "."))
    except exceptions.NotFound:
        return []
    return [{"key": r["key"], "stage": r["stage"], "model": r["model"]}
            for r in client.query(f"SELECT * FROM `{table.replace(':', '.')}`").result()]


def read_jsonl_dead(prefix: str) -> List[dict]:
    dead = []
    for path in sorted(glob.glob(prefix + ".errors-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            dead += [json.loads(line) for line in f if line.strip()]
    return [{"key": d["key"], "stage": d["stage"], "model": d["model"], "error": d["error"]} for d in dead]


def message_rows(messages) -> Rows:
    rows = [json.loads(m.data) for m in messages]
    for row, message in zip(rows, messages):
        assert message.attributes.get("key") == row.get("key"), "a message's key attribute is not its row's key"
    return _keyed(rows)


def message_dead(messages) -> List[dict]:
    return [{"key": m.attributes.get("key"), "stage": m.attributes.get("error_stage"),
             "model": m.attributes.get("model") or None, "error": m.attributes.get("error")} for m in messages]


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def assert_same(got: Any, want: Any, what: str, bools_as_ints: bool = False) -> None:
    """got (as a sink holds it) equals want (a direct call's numpy value); bytes by content; a bool
    output as bools (as 0 and 1 with bools_as_ints)."""
    want = np.asarray(want)
    if want.dtype.kind == "b" and not bools_as_ints:
        values = np.asarray(got, dtype=object).reshape(-1).tolist()
        assert all(isinstance(v, (bool, np.bool_)) for v in values), f"{what}: {got!r} are not bools"
    if want.dtype.kind in "SOU":
        got_list = [_as_bytes(v) for v in np.asarray(got, dtype=object).reshape(-1)]
        assert got_list == [bytes(v) for v in want.reshape(-1)], f"{what}: {got!r} != {want!r}"
        return
    got = np.asarray(got, dtype=np.float64 if want.dtype.kind == "f" else np.int64).reshape(-1)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-6, atol=1e-37, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want.reshape(-1), err_msg=what)


def expected_dead(records: List[dict], expected: List[dict]) -> List[tuple]:
    return sorted((r[KEY], "infer", model) for r, outs in zip(records, expected)
                  for model, out in outs.items() if out is None)


def check_outputs(rows: Rows, dead: List[dict], records: List[dict], expected: List[dict],
                  bools_as_ints: bool = False) -> None:
    """Every key there, every output of every model equal to the direct call (no more, no fewer),
    dead letters as expected, counts conserved. bools_as_ints: the sink stores bools as ints."""
    keys = [r[KEY] for r in records]
    assert sorted((d["key"], d["stage"], d["model"]) for d in dead) == expected_dead(records, expected), \
        f"dead letters: {[(d['key'], d['stage'], d['model'], d.get('error', '')[:200]) for d in dead]}"
    record_level = {d["key"] for d in dead if d["model"] is None}
    # a record every model rejected has no row: its dead letters name each model
    unscored = {r[KEY] for r, outs in zip(records, expected) if all(out is None for out in outs.values())}
    assert set(rows) | record_level | unscored == set(keys) and not set(rows) & (record_level | unscored), \
        f"keys: {len(rows)} rows, missing {sorted(set(keys) - set(rows) - record_level - unscored)[:5]}"
    for key, outs in zip(keys, expected):
        if key in unscored:
            continue
        for model, want in outs.items():
            got = rows[key].get(model)
            if want is None:
                assert got is None, f"{key}: model {model} rejected the record, yet its row has {got}"
                continue
            assert set(got) == set(want), f"{key} {model}: outputs {sorted(got)} != {sorted(want)}"
            for name, value in want.items():
                assert_same(got[name], value, f"{key} {model}.{name}", bools_as_ints)
    for model in expected[0]:
        with_outputs = sum(model in rows.get(k, {}) for k in keys)
        naming = sum(d["model"] == model for d in dead)
        assert with_outputs + naming + len(record_level) == len(records), f"{model}: counts not conserved"
