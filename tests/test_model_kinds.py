"""SavedModels people bring, scored as they are (tests/support/model_kinds.py): a tf.Transform-style
export (a vocabulary asset behind a hash table), a retrieval model (BruteForce top-k: string ids
and scores), a tf-keras model with two heads and a model whose outputs are of every dtype.

Each runs through the plain command (`--model NAME=DIR --key_feature id`) with each engine that
can run it, once per (model, engine), and its rows, read back as a user reads them, equal the
model's own signature called directly (`tf.saved_model.load(dir).signatures["serving_default"]`):
floats to 1e-5 relative, strings, ints and bools exactly and of their own JSON type. tfx-bsl's
handler cannot run a string output of per-example shape [] (the mixed model's label), which
`models.inspect` says; the same model with its label [n, 1] runs with it. The mixed-dtypes model
then goes through every sink, each read with its standard reader: pandas for JSON Lines, pyarrow
for Parquet (column types too), tf.data with the serving protos for PredictionLogs, tf.train.Example
for the examples output, the google-cloud-bigquery client on the local BigQuery.
"""

import functools
import glob
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import read_prediction_logs, run_batch_job, write_tfrecord_file
from tests.support import model_kinds

ENGINES = ("fast", "tfx-bsl")
RECORDS = 12
KINDS = {  # model name -> (export, records)
    "vocab": (model_kinds.transform_style_export, model_kinds.transform_style_records),
    "retrieval": (model_kinds.retrieval_export, model_kinds.retrieval_records),
    "heads": (model_kinds.tf_keras_multi_head_export, model_kinds.multi_head_records),
    "mixed": (model_kinds.mixed_dtypes_export, model_kinds.mixed_dtypes_records),
    # the same with its label [n, 1]: tfx-bsl's handler cannot run a string output of shape [n]
    "mixed_tfx_bsl": (functools.partial(model_kinds.mixed_dtypes_export, label_shape=(1,)),
                      model_kinds.mixed_dtypes_records),
}
# (model, engine) of the row checks: every kind with each engine that can run it
ROW_RUNS = [(name, engine) for name in ("vocab", "retrieval", "heads") for engine in ENGINES] + [
    ("mixed", "fast"), ("mixed_tfx_bsl", "tfx-bsl")]


class Built:
    """One kind's model directory, its input file and the signature's outputs called directly."""

    def __init__(self, base, name):
        export, make_records = KINDS[name]
        self.name = name
        self.dir = export(str(base / name / "1"))
        self.records = make_records(RECORDS)
        self.keys = [f"r{i}" for i in range(RECORDS)]
        self.input = write_tfrecord_file(str(base / f"{name}.tfrecord"), self.records)
        signature = tf.saved_model.load(self.dir).signatures["serving_default"]
        self.direct = {k: v.numpy() for k, v in signature(examples=tf.constant(self.records)).items()}

    def flags(self, engine="fast"):
        return ["--input", self.input, "--model", f"{self.name}={self.dir}", "--key_feature", "id",
                "--engine", engine]

    def want(self, i):
        return {name: np.asarray(value[i], dtype=value.dtype) for name, value in self.direct.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("model_kinds")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Built(base, name)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def job(built, tmp_path_factory):
    """job(model, engine, output_format) -> (JSON rows, dead letters, output prefix) of that job,
    run once for the module."""
    base = tmp_path_factory.mktemp("runs")
    cache = {}

    def get(name, engine="fast", output_format="jsonl"):
        if (name, engine, output_format) not in cache:
            out = str(base / f"{name}-{engine}-{output_format}" / "p")
            flags = built(name).flags(engine) + ["--output_format", output_format]
            cache[name, engine, output_format] = run_batch_job(flags, out) + (out,)
        return cache[name, engine, output_format]
    return get


def assert_value(got, want, what):
    """A row's JSON value equals the direct call's numpy value: floats to 1e-5 relative; strings,
    ints and bools exactly, each as its own JSON type (no bool as 0/1, no int as a float)."""
    want = np.asarray(want)
    got_flat = np.asarray(got, dtype=object).reshape(-1).tolist()
    assert np.shape(np.asarray(got, dtype=object)) == want.shape, f"{what}: shape of {got!r}, want {want.shape}"
    if want.dtype.kind == "f":
        assert all(isinstance(v, float) for v in got_flat), f"{what}: {got!r} are not all floats"
        np.testing.assert_allclose(np.float64(got_flat), want.reshape(-1), rtol=1e-5, err_msg=what)
    elif want.dtype.kind == "b":
        assert all(type(v) is bool for v in got_flat), f"{what}: {got!r} are not all bools"
        assert got_flat == want.reshape(-1).tolist(), f"{what}: {got!r} != {want!r}"
    elif want.dtype.kind in "iu":
        assert all(type(v) is int for v in got_flat), f"{what}: {got!r} are not all ints"
        assert got_flat == want.reshape(-1).tolist(), f"{what}: {got!r} != {want!r}"
    else:
        assert got_flat == [bytes(v).decode("utf-8") for v in want.reshape(-1)], f"{what}: {got!r} != {want!r}"


def assert_outputs(got, want, what):
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name in want:
        assert_value(got[name], want[name], f"{what}.{name}")


@pytest.mark.parametrize("name, engine", ROW_RUNS)
def test_rows_equal_the_signature_called_directly(built, job, name, engine):
    model = built(name)
    rows, dead, _ = job(name, engine)
    assert dead == [] and sorted(rows) == sorted(model.keys)
    for i, key in enumerate(model.keys):
        assert set(rows[key]) == {"key", name}
        assert_outputs(rows[key][name], model.want(i), f"{engine} {key} {name}")


def test_the_vocabulary_is_an_asset_and_its_lookups_are_what_the_file_says(built):
    """The export is what the brief's users have: assets/vocab.txt, read by the table at load
    (not a constant folded into the graph), OOV words on the id after the vocabulary."""
    model = built("vocab")
    with open(os.path.join(model.dir, "assets", "vocab.txt")) as f:
        assert tuple(f.read().split()) == model_kinds.VOCAB
    words = [tf.train.Example.FromString(r).features.feature["word"].bytes_list.value[0].decode()
             for r in model.records]
    oov = len(model_kinds.VOCAB)
    assert model.direct["word_id"].tolist() == [
        model_kinds.VOCAB.index(w) if w in model_kinds.VOCAB else oov for w in words]
    assert oov in model.direct["word_id"] and set(range(oov)) <= set(model.direct["word_id"].tolist())


def test_retrieval_gives_the_top_candidates_in_order(built):
    model = built("retrieval")
    ids, scores = model.direct["identifiers"], model.direct["scores"]
    assert ids.shape == scores.shape == (RECORDS, model_kinds.TOP_K)
    assert (np.diff(scores, axis=1) <= 0).all() and len({tuple(r) for r in ids.tolist()}) > 1
    assert {v.decode() for v in ids.reshape(-1)} <= set(model_kinds.CANDIDATES)


def test_tfx_bsl_cannot_run_a_string_output_of_per_example_shape_scalar_and_inspect_says_so(built):
    """tfx-bsl's predict logs take output[i].dtype, and a [n] string output's output[i] is bytes:
    every record fails in its handler. `models.inspect` says so before a job runs; the same model
    with its label [n, 1] runs (its rows: test_rows_equal_the_signature_called_directly)."""
    from models.inspect import engine_report

    report = engine_report(built("mixed").dir)
    assert report["fast"][0] and not report["tfx-bsl"][0]
    assert engine_report(built("mixed_tfx_bsl").dir)["tfx-bsl"][0]


def test_a_tfx_bsl_job_on_a_string_output_per_record_is_refused_before_it_starts(built, tmp_path, capsys):
    from pipelines import batch_infer

    out = str(tmp_path / "out" / "p")
    assert batch_infer.main(built("mixed").flags("tfx-bsl") + ["--output", out]) == 2
    err = capsys.readouterr().err
    assert "output 'label' is one string per record" in err and "--engine fast" in err
    assert not os.path.exists(os.path.dirname(out))


# The mixed-dtypes model through every sink.

MIXED_DTYPES = {"label": np.object_, "count": np.int64, "positive": np.bool_, "score": np.float32,
                "top": np.int32, "wide": np.float64, "vec": np.float32, "signs": np.bool_}


def test_the_mixed_model_has_every_dtype(built):
    model = built("mixed")
    assert {name: value.dtype.type for name, value in model.direct.items()} == MIXED_DTYPES
    assert model.direct["vec"].shape == model.direct["signs"].shape == (RECORDS, 3)
    assert set(model.direct["positive"].tolist()) == {True, False}


def test_jsonl_read_with_pandas(built, job):
    import pandas as pd

    model = built("mixed")
    _, _, out = job("mixed")
    (path,) = glob.glob(out + "-*.jsonl")
    frame = pd.read_json(path, lines=True)
    assert sorted(frame["key"]) == sorted(model.keys)
    for key, outputs in zip(frame["key"], frame["mixed"]):
        assert_outputs(outputs, model.want(model.keys.index(key)), f"jsonl {key}")


def test_parquet_keeps_every_dtype(built, job):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = built("mixed")
    _, dead, out = job("mixed", "fast", "parquet")
    table = pq.read_table(sorted(glob.glob(out + "-*.parquet")))
    assert dead == []
    assert table.schema.field("mixed").type == pa.struct([
        ("count", pa.int64()), ("label", pa.string()), ("positive", pa.bool_()), ("score", pa.float32()),
        ("signs", pa.list_(pa.bool_(), 3)), ("top", pa.int32()), ("vec", pa.list_(pa.float32(), 3)),
        ("wide", pa.float64())])
    rows = {row["key"]: row["mixed"] for row in table.to_pylist()}
    assert sorted(rows) == sorted(model.keys)
    for i, key in enumerate(model.keys):
        assert_outputs(rows[key], model.want(i), f"parquet {key}")


def _example_key(serialized):
    return tf.train.Example.FromString(serialized).features.feature["id"].bytes_list.value[0].decode()


LOG_RUNS = [("mixed", "fast"), ("mixed_tfx_bsl", "fast"), ("mixed_tfx_bsl", "tfx-bsl")]


@pytest.mark.parametrize("name, engine", LOG_RUNS)
def test_prediction_logs_keep_every_dtype(built, job, name, engine):
    """Each output's TensorProto has the model's own dtype (DT_BOOL, DT_INT32, DT_DOUBLE, ...)."""
    model = built(name)
    _, dead, out = job(name, engine, "tfrecord")
    logs = read_prediction_logs(out + "-*.tfrecord")
    assert dead == [] and len(logs) == RECORDS
    for log in logs:
        (request,) = log.predict_log.request.inputs.values()
        key = _example_key(request.string_val[0])
        want = model.want(model.keys.index(key))
        outputs = {name: tf.make_ndarray(t) for name, t in log.predict_log.response.outputs.items()}
        assert set(outputs) == set(want)
        for output, value in outputs.items():
            assert value.dtype == model.direct[output].dtype, output
            assert value.shape == (1,) + want[output].shape, output
            if value.dtype.kind == "f":
                np.testing.assert_allclose(value[0], want[output], rtol=1e-5, err_msg=f"{key} {output}")
            else:
                assert value.reshape(-1).tolist() == want[output].reshape(-1).tolist(), f"{key} {output}"


def test_both_engines_write_the_same_prediction_logs(job):
    by_engine = [sorted(log.SerializeToString(deterministic=True)
                        for log in read_prediction_logs(job("mixed_tfx_bsl", engine, "tfrecord")[2] + "-*.tfrecord"))
                 for engine in ENGINES]
    assert by_engine[0] == by_engine[1] and len(by_engine[0]) == RECORDS


def test_examples_output_stores_bools_and_ints_as_int64_lists(built, job):
    """BulkInferrer's examples output (docs/sinks.md): floats as float_list, ints and bools as
    int64_list (0/1), strings as bytes_list; the input features stay."""
    model = built("mixed")
    _, dead, out = job("mixed", "fast", "examples")
    (shard,) = glob.glob(out + "-*.tfrecord")
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard)]
    assert dead == [] and len(examples) == RECORDS
    kinds = {"f": "float_list", "i": "int64_list", "b": "int64_list", "O": "bytes_list"}
    for example in examples:
        features = example.features.feature
        key = features["id"].bytes_list.value[0].decode()
        want = model.want(model.keys.index(key))
        assert set(features) == set(want) | {"id", "x", "name"}
        for name, value in want.items():
            assert features[name].WhichOneof("kind") == kinds[value.dtype.kind], name
            stored = list(getattr(features[name], kinds[value.dtype.kind]).value)
            if value.dtype.kind == "f":
                np.testing.assert_allclose(stored, value.reshape(-1), rtol=1e-5, err_msg=f"{key} {name}")
            elif value.dtype.kind == "O":
                assert stored == value.reshape(-1).tolist(), f"{key} {name}"
            else:
                assert stored == value.reshape(-1).astype(np.int64).tolist(), f"{key} {name}"


@pytest.mark.parametrize("method", ["FILE_LOADS", "STREAMING_INSERTS"])
def test_bigquery_keeps_every_dtype(built, bigquery_emulator, method):
    from pipelines.local import bigquery_emulator as redirect
    from tests.test_bigquery import emulator_flags

    model = built("mixed")
    client = bigquery_emulator.client()
    dataset = "kinds_" + uuid.uuid4().hex[:8]
    client.create_dataset(dataset)
    table, errors = f"{bigquery_emulator.project}:{dataset}.scored", f"{bigquery_emulator.project}:{dataset}.errors"
    try:
        from pipelines import batch_infer

        batch_infer.run(model.flags() + ["--output_table", table, "--errors_table", errors,
                                         "--bigquery_write_method", method]
                        + emulator_flags(bigquery_emulator), save_main_session=False)
    finally:
        redirect.restore()  # --bigquery_emulator redirected this process's clients
    try:
        schema = {f.name: f for f in client.get_table(table.replace(":", ".")).schema}
        assert {f.name: (f.field_type, f.mode) for f in schema["mixed"].fields} == {
            "label": ("STRING", "NULLABLE"), "count": ("INTEGER", "NULLABLE"), "positive": ("BOOLEAN", "NULLABLE"),
            "score": ("FLOAT", "NULLABLE"), "top": ("INTEGER", "NULLABLE"), "wide": ("FLOAT", "NULLABLE"),
            "vec": ("FLOAT", "REPEATED"), "signs": ("BOOLEAN", "REPEATED")}
        rows = {r["key"]: dict(r["mixed"]) for r in client.query(f"SELECT * FROM `{table.replace(':', '.')}`").result()}
        assert sorted(rows) == sorted(model.keys)
        for i, key in enumerate(model.keys):
            assert_outputs(rows[key], model.want(i), f"bigquery {key}")
    finally:
        client.delete_dataset(dataset, delete_contents=True)
