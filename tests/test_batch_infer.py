"""End to end on the DirectRunner: real TFRecord files, a real model exported by models.prepare."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from models.serving.examples import make_example
from pipelines import batch_infer
from tests.helpers import read_jsonl


def penguin_values(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"id": f"p{i}", "measurements": rng.normal([44, 17, 200, 4200], [5, 2, 14, 800]).tolist(),
             "island": int(rng.integers(0, 3))} for i in range(n)]


def expected_outputs(keras_model, values):
    """The in-memory Keras model called directly on the same values: the reference."""
    out = keras_model({"measurements": np.asarray([v["measurements"] for v in values], np.float32),
                       "island": np.asarray([v["island"] for v in values], np.int64)})
    return {k: np.asarray(v) for k, v in out.items()}


def run_job(*args):
    result, counters = batch_infer.run(list(args), save_main_session=False)
    return counters


def test_predictions_equal_direct_tf_call(penguin_model, write_tfrecords, tmp_path):
    version_dir, keras_model = penguin_model
    values = penguin_values(300)
    path = write_tfrecords("part-0.tfrecord", [make_example(v).SerializeToString() for v in values])
    out = str(tmp_path / "out" / "pred")
    counters = run_job("--input", path, "--model", f"clf={os.path.dirname(version_dir)}",
                       "--output", out, "--key_feature", "id")
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    assert set(rows) == {v["id"] for v in values}
    expected = expected_outputs(keras_model, values)
    for i, v in enumerate(values):
        row = rows[v["id"]]
        assert set(row) == {"key", "clf"}
        np.testing.assert_allclose(row["clf"]["probabilities"], expected["probabilities"][i], rtol=1e-6)
        assert row["clf"]["species"] == int(expected["species"][i])
    assert counters["records_read"] == 300 and counters["predictions_written"] == 300
    assert read_jsonl(out + ".errors-*.jsonl") == []


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_bad_records_become_dead_letters_and_counts_are_conserved(penguin_model, write_tfrecords, tmp_path,
                                                                  engine):
    version_dir, _ = penguin_model
    good = [make_example(v).SerializeToString() for v in penguin_values(40, seed=1)]
    bad = {
        "decode": b"\x0a\xff\xff garbage",
        "validate-missing": make_example({"id": "m", "island": 1}).SerializeToString(),
        "validate-dtype": make_example({"id": "d", "measurements": ["a"] * 4, "island": 1}).SerializeToString(),
        "validate-shape": make_example({"id": "s", "measurements": [1.0] * 3, "island": 1}).SerializeToString(),
        "infer": make_example({"id": "x", "measurements": [40.0, 17.0, 190.0, 4000.0],
                               "island": 9}).SerializeToString(),
    }
    records = good[:20] + list(bad.values()) + good[20:]
    plain = write_tfrecords("a.tfrecord", records)
    truncated = write_tfrecords("b.tfrecord.gz", good[:5], gzip=True, tail=b"\x10\x00\x00")
    out = str(tmp_path / "pred")
    errors = str(tmp_path / "dead" / "letters")
    counters = run_job("--input", plain, "--input", truncated, "--model", version_dir,
                       "--output", out, "--errors", errors, "--engine", engine)
    rows = read_jsonl(out + "-*.jsonl")
    dead = read_jsonl(errors + "-*.jsonl")
    # every input (45 + 5 records, plus the truncated tail) is one row or one dead letter
    assert len(rows) + len(dead) == len(records) + 5 + 1
    assert len(rows) == 45
    stages = sorted(d["stage"] for d in dead)
    assert stages == ["decode", "infer", "read", "validate", "validate", "validate"]
    by_key = {d["key"]: d for d in dead}
    assert by_key["a.tfrecord:20"]["stage"] == "decode"
    assert by_key["a.tfrecord:24"]["stage"] == "infer" and by_key["a.tfrecord:24"]["model"] == "model"
    assert "not in [0, 3)" in by_key["a.tfrecord:24"]["error"]
    read_dead = by_key["b.tfrecord.gz:5"]
    assert read_dead["stage"] == "read" and truncated in read_dead["error"] and "byte" in read_dead["error"]
    for d in dead:
        if d["stage"] != "read":
            assert d["input_base64"]  # the raw record travels with its dead letter
    assert counters["dead_letters_validate"] == 3 and counters["dead_letters_infer"] == 1
    assert counters["predictions_written"] == 45


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_tfrecord_output_holds_prediction_logs(penguin_model, write_tfrecords, tmp_path, engine):
    version_dir, keras_model = penguin_model
    values = penguin_values(10, seed=2)
    path = write_tfrecords("p.tfrecord", [make_example(v).SerializeToString() for v in values])
    out = str(tmp_path / "logs")
    run_job("--input", path, "--model", version_dir, "--output", out, "--output_format", "tfrecord",
            "--engine", engine)
    (shard,) = glob.glob(out + "-*.tfrecord")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard)]
    assert len(logs) == 10
    expected = expected_outputs(keras_model, values)
    by_input = {log.predict_log.request.inputs["examples"].string_val[0]: log for log in logs}
    for i, v in enumerate(values):
        log = by_input[make_example(v).SerializeToString()]
        got = tf.make_ndarray(log.predict_log.response.outputs["probabilities"])[0]
        np.testing.assert_allclose(got, expected["probabilities"][i], rtol=1e-6)


def test_keys_are_deterministic_without_key_feature(penguin_model, write_tfrecords, tmp_path):
    version_dir, _ = penguin_model
    path = write_tfrecords("k.tfrecord", [make_example(v).SerializeToString() for v in penguin_values(30)])
    keys = []
    for attempt in range(2):
        out = str(tmp_path / f"run{attempt}")
        run_job("--input", path, "--model", version_dir, "--output", out)
        keys.append(sorted((r["key"], r["model"]["species"]) for r in read_jsonl(out + "-*.jsonl")))
    assert keys[0] == keys[1]
    assert {k for k, _ in keys[0]} == {f"k.tfrecord:{i}" for i in range(30)}


def test_demo_runs_and_accounts_for_every_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFINFER_DEMO_DIR", str(tmp_path / "demo"))
    assert batch_infer.main([]) == 0
    printed = capsys.readouterr().out
    assert "records in 5,001; predictions out 4,995; dead letters 6" in printed
    rows = read_jsonl(str(tmp_path / "demo" / "output" / "predictions-*.jsonl"))
    dead = read_jsonl(str(tmp_path / "demo" / "output" / "predictions.errors-*.jsonl"))
    assert len(rows) == 4995 and len(dead) == 6
    assert len({r["key"] for r in rows} | {d["key"] for d in dead}) == 5001
    # the second run reuses the cached model and data
    assert batch_infer.main([]) == 0
    assert "building the demo model" not in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--model", "{missing}"], "does not exist"),
    (["--model", "{empty}"], "holds no SavedModel"),
    (["--input", "{tmp}/nothing-*.tfrecord"], "matches no files"),
    (["--output_format", "csv"], "--output_format 'csv' is not one of"),
    (["--engine", "turbo"], "--engine 'turbo' is not one of"),
    (["--min_batch_size", "0"], "--min_batch_size must be a positive integer"),
    (["--signature", "serving_dense", "--engine", "tfx-bsl"], "takes tensors"),
    (["--signature", "nope"], "no signature 'nope'"),
])
def test_cli_errors_are_clear(penguin_model, write_tfrecords, tmp_path, capsys, args, message):
    version_dir, _ = penguin_model
    (tmp_path / "empty").mkdir()
    path = write_tfrecords("in.tfrecord", [make_example(penguin_values(1)[0]).SerializeToString()])
    base = {"--input": path, "--model": version_dir, "--output": str(tmp_path / "o")}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = [x.format(missing=str(tmp_path / "missing"), empty=str(tmp_path / "empty"), tmp=str(tmp_path))
            for kv in base.items() for x in kv]
    assert batch_infer.main(argv) == 2
    err = capsys.readouterr().err
    assert "batch_infer: error:" in err and message in err
    assert not glob.glob(str(tmp_path / "o*"))  # nothing ran


def test_missing_required_flag_is_reported(capsys):
    assert batch_infer.main(["--input", "x.tfrecord"]) == 2
    err = capsys.readouterr().err
    assert "--model (or --graph) is required" in err and "--output (or --output_table) is required" in err


def test_a_model_with_its_own_example_signature_runs_as_it_is(write_tfrecords, tmp_path):
    """A SavedModel exported by hand (as in TF tutorials or by a TFX Trainer), without our
    feature_spec.json: the spec, default included, is read from the parse op in its signature."""
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input(shape=(2,), name="x")
    model = keras.Model(x, {"score": keras.layers.Dense(1, name="score")(x)})
    archive = keras.export.ExportArchive()
    archive.track(model)
    features = {"x": tf.io.FixedLenFeature([2], tf.float32, default_value=[0.5, -1.0])}
    archive.add_endpoint(
        "serving_default", lambda examples: model(tf.io.parse_example(examples, features)["x"]),
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    export_dir = str(tmp_path / "handmade" / "1")
    archive.write_out(export_dir, verbose=False)
    assert not os.path.exists(os.path.join(export_dir, "assets.extra"))

    records = [make_example({"x": [1.0, 2.0]}), make_example({"other": [1]}),
               make_example({"x": [1, 2, 3]})]
    path = write_tfrecords("h.tfrecord", [r.SerializeToString() for r in records])
    out = str(tmp_path / "o")
    run_job("--input", path, "--model", os.path.dirname(export_dir), "--output", out)
    rows = {r["key"]: r["model"]["score"] for r in read_jsonl(out + "-*.jsonl")}
    expected = model(np.asarray([[1.0, 2.0], [0.5, -1.0]], np.float32))["score"].numpy()
    np.testing.assert_allclose(rows["h.tfrecord:0"], expected[0], rtol=1e-6)
    np.testing.assert_allclose(rows["h.tfrecord:1"], expected[1], rtol=1e-6)  # the default filled in
    assert [(d["key"], d["stage"]) for d in read_jsonl(out + ".errors-*.jsonl")] == [("h.tfrecord:2", "validate")]


def test_multi_threading_mode_is_not_the_default_and_is_warned_about():
    # Beam 2.77's multi_threading mode dropped elements in our runs (docs/ARCHITECTURE.md).
    from apache_beam.options.pipeline_options import PipelineOptions

    assert batch_infer.warn_about_unsafe_runner_modes(PipelineOptions([])) is None
    warned = batch_infer.warn_about_unsafe_runner_modes(
        PipelineOptions(["--direct_running_mode=multi_threading"]))
    assert warned and "drop elements" in warned
