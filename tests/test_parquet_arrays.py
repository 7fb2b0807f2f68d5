"""Parquet to a signature that takes tensors, column arrays all the way: a Keras model.export()
(two dense inputs) and a TF2 module (float, int64, bool and string inputs) scored from Parquet
files by the real job, rows equal to the model called directly, Parquet output read back with
pyarrow, PredictionLogs with TensorFlow. The engine is fed the arrays the reader cut (no
tf.Example is built for a clean chunk); a row group holding a bad row is read row by row, its bad
row one dead letter, and every row is counted once."""

import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from models.serving.engines import load_fast
from models.serving.model import load_serving_model
from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.support.tensor_models import (keras_two_inputs_export, load_signature, typed_direct, typed_module_export,
                                         version_dir)
from transforms.records.columns import ColumnRecords
from transforms.sources.parquet import ReadParquetFn, ReadUnit
from transforms.sources.text import InstanceOptions

RNG = np.random.default_rng(3)
N = 40
MEASUREMENTS = RNG.normal(size=(N, 4)).astype(np.float32)
CONTEXT = RNG.normal(size=(N, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory):
    return keras_two_inputs_export(version_dir(str(tmp_path_factory.mktemp("keras")), "km"))


def keras_table(measurements=None):
    measurements = pa.array(MEASUREMENTS.tolist(), pa.list_(pa.float32(), 4)) if measurements is None else measurements
    return pa.table({"id": [f"k{i}" for i in range(N)], "measurements": measurements,
                     "context": pa.array(CONTEXT.tolist(), pa.list_(pa.float64()))})


def keras_expected(keras_dir):
    out = load_signature(keras_dir)(measurements=tf.constant(MEASUREMENTS), context=tf.constant(CONTEXT))
    (name,) = out
    return name, out[name].numpy()


def test_the_reader_hands_clean_rows_over_as_arrays_and_the_engine_builds_no_example(keras_dir, tmp_path):
    path = str(tmp_path / "in.parquet")
    pq.write_table(keras_table(), path, row_group_size=16)
    model = load_serving_model(keras_dir, "km")
    options = InstanceOptions(model.feature_spec, key_field="id", bulk_arrays=True)
    fn = ReadParquetFn(options, chunk_size=10)
    fn.setup()
    chunks = list(fn.process(ReadUnit(path, "in.parquet", 0, None, 0)))  # the whole file as one unit
    assert [len(c.records) for c in chunks] == [10, 6, 10, 6, 8]  # row groups of 16, chunks of 10
    assert all(isinstance(c.records, ColumnRecords) for c in chunks)
    assert [k for c in chunks for k in c.keys] == [f"k{i}" for i in range(N)]
    assert [c.source(i)["row"] for c in chunks for i in range(len(c.keys))] == list(range(N))
    call = load_fast(keras_dir, "serving_default", keep_logs=True)
    name, expected = keras_expected(keras_dir)
    got = np.concatenate([call(c.records)[name] for c in chunks])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert all(c.records._list is None for c in chunks)  # no tf.Example was built, logs included


@pytest.mark.parametrize("redistribute", ["no", "yes"])  # yes: the chunks pickled through a shuffle
def test_a_keras_export_scored_from_parquet_to_parquet_gives_the_models_numbers(keras_dir, tmp_path, redistribute):
    path = str(tmp_path / "in.parquet")
    pq.write_table(keras_table(), path, row_group_size=16)
    out = str(tmp_path / "out" / "p")
    counters = batch_infer.run(["--input", path, "--model", f"km={keras_dir}", "--key_feature", "id",
                                "--output_format", "parquet", "--output", out, "--redistribute", redistribute],
                               save_main_session=False)[1]
    assert counters["records_read_as_arrays"] == N == counters["predictions_written"]
    table = pq.read_table(sorted(glob.glob(out + "-*.parquet"))).to_pandas()
    name, expected = keras_expected(keras_dir)
    assert sorted(table["key"]) == sorted(f"k{i}" for i in range(N))
    got = {row["key"]: row["km"][name] for _, row in table.iterrows()}
    np.testing.assert_allclose(np.stack([got[f"k{i}"] for i in range(N)]), expected, rtol=1e-6)


def test_a_bad_row_is_a_dead_letter_and_its_batch_is_read_row_by_row(keras_dir, tmp_path):
    rows = MEASUREMENTS.tolist()
    rows[21] = rows[21][:3]  # row 21: three values where the input takes four
    rows[30] = None  # row 30: no measurements
    path = str(tmp_path / "in.parquet")
    pq.write_table(keras_table(pa.array(rows, pa.list_(pa.float32()))), path, row_group_size=16)
    out = str(tmp_path / "out" / "p")
    counters = batch_infer.run(["--input", path, "--model", f"km={keras_dir}", "--key_feature", "id",
                                "--output", out], save_main_session=False)[1]
    predictions = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    errors = read_jsonl(out + ".errors-*.jsonl")
    assert counters["records_read"] == N == len(predictions) + len(errors)
    assert counters["records_read_as_arrays"] == N - 16  # rows 16..31, the row group of the bad rows, one by one
    assert sorted((e["key"], e["stage"], e["source"]["row"]) for e in errors) == [
        ("k21", "convert", 21), ("k30", "convert", 30)]
    assert "measurements" in errors[0]["error"]
    name, expected = keras_expected(keras_dir)
    for i in set(range(N)) - {21, 30}:
        np.testing.assert_allclose(predictions[f"k{i}"]["km"][name], expected[i], rtol=1e-6)


TYPED = [([0.5, 1.0, -2.0], 3, True, "ab"), ([1.5, 0.0, 2.0], -1, False, "c"), ([0.0, 0.0, 1.0], 0, True, "")]


def test_typed_inputs_from_parquet_columns_and_their_prediction_logs(tmp_path):
    typed_dir = typed_module_export(version_dir(str(tmp_path / "typed"), "typed"))
    path = str(tmp_path / "typed.parquet")
    # ids: the module's input of any length, fixed to 2 values here by a feature spec
    spec = tmp_path / "spec.json"
    spec.write_text('{"ids": {"dtype": "int64", "shape": [2]}}')
    pq.write_table(pa.table({
        "key": ["a", "b", "c"], "x": pa.array([t[0] for t in TYPED], pa.list_(pa.float64(), 3)),
        "n": pa.array([t[1] for t in TYPED], pa.int32()), "flag": [t[2] for t in TYPED],
        "word": [t[3] for t in TYPED], "ids": pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int64(), 2))}), path)
    out = str(tmp_path / "out" / "p")
    assert batch_infer.main(["--input", path, "--model", f"typed={typed_dir}", "--key_feature", "key",
                             "--feature_spec", str(spec), "--output_format", "tfrecord", "--output", out]) == 0
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for shard in sorted(glob.glob(out + "-*.tfrecord")) for r in tf.data.TFRecordDataset(shard)]
    assert len(logs) == len(TYPED)
    by_word = {tf.make_ndarray(log.predict_log.request.inputs["word"])[0].decode(): log for log in logs}
    for (x, n, flag, word), ids in zip(TYPED, [[1, 2], [3, 4], [5, 6]]):
        request, response = by_word[word].predict_log.request, by_word[word].predict_log.response
        np.testing.assert_allclose(tf.make_ndarray(request.inputs["x"]), [x])
        assert tf.make_ndarray(request.inputs["flag"]).tolist() == [flag]
        want = typed_direct(typed_dir, x, n, flag, word, ids)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), [want["score"]], rtol=1e-6)
        assert tf.make_ndarray(response.outputs["ids_sum"]).tolist() == [want["ids_sum"]]
