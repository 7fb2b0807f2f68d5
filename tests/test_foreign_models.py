"""SavedModels people already have, scored as they are, with both engines: TF1 SavedModelBuilder
exports in TF Serving's zero-padded version directories (predict, classify, regress), a TF2
module whose string input is not named "examples", an Estimator-style export parsing a VarLen
feature, and models whose outputs ignore the batch. Rows equal the numbers the models compute;
PredictionLogs equal what tfx_bsl.public.beam.RunInference writes, byte for byte."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from tensorflow_serving.apis import prediction_log_pb2

from models.serving import layout
from models.serving.examples import make_example
from models.serving.feature_spec import Feature
from pipelines import batch_infer
from tests.helpers import read_jsonl, read_prediction_logs as read_logs, run_batch_job as run
from tests.support.foreign_models import (batch_ignoring_export, estimator_varlen_export, expected_linear,
                                          expected_varlen, tf1_linear_export, tf2_module_export)

ENGINES = ("fast", "tfx-bsl")
XS = [[1.0, 2.0], [0.5, -0.5], [-3.0, 1.0], [2.0, 2.0], [0.0, 0.25], [4.0, -1.0]]


@pytest.fixture(scope="module")
def padded_base(tmp_path_factory):
    """base/00000123 and base/00000124 (TF Serving's own names); 124 is the linear model."""
    base = str(tmp_path_factory.mktemp("serving"))
    tf1_linear_export(base, "00000123")
    tf1_linear_export(base, "00000124")
    return base


@pytest.fixture
def linear_input(write_tfrecords):
    records = [make_example({"x": x}).SerializeToString() for x in XS] + [b"\x0a\xff garbage"]
    return write_tfrecords("linear.tfrecord", records), records


def tfx_bsl_logs(model_dir, signature, records, out):
    from tfx_bsl.public.beam import RunInference
    from tfx_bsl.public.proto import model_spec_pb2

    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=model_dir, signature_name=[signature]))
    with TestPipeline() as p:
        (p | beam.Create(records) | RunInference(spec)
         | beam.io.WriteToTFRecord(out, coder=beam.coders.ProtoCoder(prediction_log_pb2.PredictionLog)))
    return read_logs(out + "*")


def test_zero_padded_versions_resolve_to_the_highest_kept_as_named(padded_base):
    assert layout.resolve_version_dir(padded_base) == os.path.join(padded_base, "00000124")
    assert layout.list_versions(padded_base) == [123, 124]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("signature", ["serving_default", "classify", "classify_scores", "regress"])
def test_tf1_signatures_give_the_models_numbers_and_tfx_bsls_logs(padded_base, linear_input, tmp_path,
                                                                 engine, signature):
    path, records = linear_input
    common = ["--input", path, "--model", f"linear={padded_base}", "--signature", signature, "--engine", engine]
    rows, dead = run(common, str(tmp_path / "rows"))
    expected = expected_linear(XS)
    assert [(d["key"], d["stage"]) for d in dead] == [(f"linear.tfrecord:{len(XS)}", "decode")]
    assert len(rows) == len(XS)  # conservation: 6 rows + 1 dead letter for 7 records
    for i in range(len(XS)):
        row = rows[f"linear.tfrecord:{i}"]["linear"]
        if signature == "serving_default":
            np.testing.assert_allclose(row["score"], expected["score"][i], rtol=1e-6)
            np.testing.assert_allclose(row["double"], expected["double"][i], rtol=1e-6)
        elif signature.startswith("classify"):
            # TF Serving's Classify result: k labels ("" without a classes output) and k scores
            labels = ["neg", "pos"] if signature == "classify" else ["", ""]
            assert set(row) == {"classes", "scores"} and row["classes"] == labels
            np.testing.assert_allclose(row["scores"], expected["scores"][i], rtol=1e-6)
        else:  # TF Serving's Regress result: one number per record
            assert set(row) == {"outputs"}
            np.testing.assert_allclose(row["outputs"], expected["outputs"][i][0], rtol=1e-6)

    out = str(tmp_path / "logs")
    batch_infer.run(common + ["--output_format", "tfrecord", "--output", out], save_main_session=False)
    ours = read_logs(out + "-*.tfrecord")
    reference = tfx_bsl_logs(layout.resolve_version_dir(padded_base), signature, records[:len(XS)],
                             str(tmp_path / "reference"))
    assert len(ours) == len(XS)
    assert sorted(log.SerializeToString(deterministic=True) for log in ours) == sorted(
        log.SerializeToString(deterministic=True) for log in reference)


@pytest.mark.parametrize("signature", ["classify", "classify_scores", "regress"])
def test_parquet_columns_hold_what_classify_and_regress_rows_hold(padded_base, linear_input, tmp_path, signature):
    """The schema follows the method's rule, not the signature's raw outputs: a regress [n, 1]
    output is one number per record, a classify signature with scores only also has classes."""
    import pyarrow.parquet as pq

    path, _ = linear_input
    common = ["--input", path, "--model", f"linear={padded_base}", "--signature", signature]
    rows, _ = run(common, str(tmp_path / "rows"))
    out = str(tmp_path / "parquet")
    batch_infer.run(common + ["--output_format", "parquet", "--output", out], save_main_session=False)
    table = pq.read_table(sorted(glob.glob(out + "-*.parquet")))
    dead = read_jsonl(out + ".errors-*.jsonl")
    assert table.num_rows == len(rows) == len(XS)  # no chunk became dead letters on the way
    assert [(d["key"], d["stage"]) for d in dead] == [(f"linear.tfrecord:{len(XS)}", "decode")]  # 6 + 1 = 7 in
    for row in table.to_pylist():
        expected = rows[row["key"]]["linear"]
        assert set(row["linear"]) == set(expected)
        for name, value in expected.items():
            if name == "classes":
                assert row["linear"][name] == value
            else:
                np.testing.assert_allclose(row["linear"][name], value, rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_tf2_module_with_its_own_input_name(tmp_path, linear_input, engine):
    model_dir = tf2_module_export(str(tmp_path / "module" / "1"), input_name="inputs")
    path, records = linear_input
    rows, dead = run(["--input", path, "--model", model_dir, "--engine", engine], str(tmp_path / "rows"))
    direct = tf.saved_model.load(model_dir).signatures["serving_default"](
        inputs=tf.constant(records[:len(XS)]))
    assert len(rows) == len(XS) and [d["stage"] for d in dead] == ["decode"]
    for i in range(len(XS)):
        np.testing.assert_allclose(rows[f"linear.tfrecord:{i}"]["model"]["y"], direct["y"].numpy()[i], rtol=1e-6)
        np.testing.assert_allclose(rows[f"linear.tfrecord:{i}"]["model"]["total"], direct["total"].numpy()[i],
                                   rtol=1e-6)
    out = str(tmp_path / "logs")
    batch_infer.run(["--input", path, "--model", model_dir, "--engine", engine, "--output_format", "tfrecord",
                     "--output", out], save_main_session=False)
    ours = read_logs(out + "-*.tfrecord")
    assert {tuple(log.predict_log.request.inputs) for log in ours} == {("inputs",)}
    reference = tfx_bsl_logs(model_dir, "serving_default", records[:len(XS)], str(tmp_path / "reference"))
    assert sorted(log.SerializeToString(deterministic=True) for log in ours) == sorted(
        log.SerializeToString(deterministic=True) for log in reference)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_estimator_style_varlen_parse_is_scored(tmp_path, write_tfrecords, engine):
    model_dir = estimator_varlen_export(str(tmp_path / "estimator"))
    values = [{"tokens": [1, 2, 3], "weight": [2.0]}, {"tokens": []}, {"weight": [0.5]},
              {"tokens": [7]}, {"tokens": list(range(20)), "weight": [1.5]}]
    spec = (Feature("tokens", "int64", varlen=True), Feature("weight", "float32", (1,), default=[1.0]))
    records = [make_example(v, spec).SerializeToString() for v in values]
    records.append(make_example({"tokens": [1.5, 2.5]}).SerializeToString())  # floats, not int64
    path = write_tfrecords("varlen.tfrecord", records)
    rows, dead = run(["--input", path, "--model", model_dir, "--engine", engine], str(tmp_path / "rows"))
    assert [(d["key"], d["stage"], d["model"]) for d in dead] == [("varlen.tfrecord:5", "validate", "model")]
    assert "'tokens' is float, expected int64" in dead[0]["error"]
    expected = expected_varlen(values)
    assert len(rows) == len(values)
    for i in range(len(values)):
        np.testing.assert_allclose(rows[f"varlen.tfrecord:{i}"]["model"]["score"], expected[i], rtol=1e-6)


def test_outputs_of_unknown_rank_get_their_columns_from_the_model_itself(tmp_path, write_tfrecords):
    """The Estimator-style export's sparse parse leaves its score's rank out of the SignatureDef;
    the launcher asks the model, and Parquet and BigQuery get a scalar column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.serving.model import load_serving_model
    from transforms.graph.model import parallel_graph
    from transforms.scoring.output_ranks import with_output_ranks
    from transforms.sinks.bigquery_schema import prediction_schema

    model_dir = estimator_varlen_export(str(tmp_path / "estimator"))
    model = load_serving_model(model_dir)
    assert dict((name, shape) for name, _, shape in model.output_specs) == {"score": None}  # as exported
    graph = with_output_ranks(parallel_graph([model]))
    assert graph.nodes[0].model.output_specs == (("score", "float32", (-1,)),)
    (field,) = prediction_schema(graph)["fields"][1]["fields"]
    assert (field["name"], field["type"], field.get("mode")) == ("score", "FLOAT64", "NULLABLE")

    values = [{"tokens": [1, 2, 3], "weight": [2.0]}, {"weight": [0.5]}, {"tokens": [7]}]
    spec = (Feature("tokens", "int64", varlen=True), Feature("weight", "float32", (1,), default=[1.0]))
    path = write_tfrecords("varlen.tfrecord", [make_example(v, spec).SerializeToString() for v in values])
    out = str(tmp_path / "parquet")
    batch_infer.run(["--input", path, "--model", model_dir, "--output_format", "parquet", "--output", out],
                    save_main_session=False)
    table = pq.read_table(sorted(glob.glob(out + "-*.parquet")))
    assert table.schema.field("model").type == pa.struct([("score", pa.float32())])
    scores = {row["key"]: row["model"]["score"] for row in table.to_pylist()}
    np.testing.assert_allclose([scores[f"varlen.tfrecord:{i}"] for i in range(3)], expected_varlen(values),
                               rtol=1e-6)


def test_varlen_features_are_read_from_the_parse_op_and_a_spec_file_overrides(tmp_path):
    from models.serving.model import load_serving_model

    model_dir = estimator_varlen_export(str(tmp_path / "estimator"))
    spec = {f.name: f for f in load_serving_model(model_dir).feature_spec}
    assert spec["tokens"].varlen and spec["tokens"].dtype == "int64" and not spec["tokens"].required
    assert not spec["weight"].varlen and spec["weight"].default == [1.0]
    # --feature_spec replaces what the parse op says; JSON Lines are converted by it: here weight
    # becomes required, so a line without it is a convert dead letter
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"features": [{"name": "tokens", "dtype": "int64", "varlen": True},
                                                  {"name": "weight", "dtype": "float32", "shape": [1]}]}))
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"id": "a", "tokens": [1, 2]}\n{"id": "b", "tokens": [1], "weight": [3.0]}\n'
                     '{"id": "c", "tokens": [], "weight": [2.0]}\n')
    flags = ["--input", str(lines), "--model", model_dir, "--key_feature", "id"]
    rows, dead = run(flags + ["--feature_spec", str(spec_file)], str(tmp_path / "override"))
    assert {k: r["model"]["score"] for k, r in rows.items()} == {"b": 4.0, "c": 0.0}
    assert [(d["key"], d["stage"]) for d in dead] == [("a", "convert")]
    assert "'weight': required and missing" in dead[0]["error"]
    rows, dead = run(flags, str(tmp_path / "parse_op"))  # the parse op's default fills weight
    assert {k: r["model"]["score"] for k, r in rows.items()} == {"a": 5.0, "b": 4.0, "c": 0.0} and dead == []


def test_inspect_shows_a_varlen_feature_plainly_and_a_fixed_one_with_shape_and_default(tmp_path):
    from models.inspect import inspect_report

    text, ok = inspect_report(estimator_varlen_export(str(tmp_path / "estimator")))
    assert ok
    spec_lines = text.split("feature spec (from signature):\n", 1)[1].splitlines()[:2]
    assert [line.strip() for line in spec_lines] == ["tokens: int64, variable length",
                                                     "weight: float32[1] (default=[1.0])"]
    assert "default=None" not in text


def test_a_model_whose_signature_says_it_ignores_the_batch_is_refused_at_launch(tmp_path, write_tfrecords, capsys):
    model_dir = batch_ignoring_export(str(tmp_path / "static"), static=True)
    path = write_tfrecords("x.tfrecord", [make_example({"x": [1.0, 2.0]}).SerializeToString()])
    code = batch_infer.main(["--input", path, "--model", model_dir, "--output", str(tmp_path / "o")])
    assert code == 2
    assert "output 'y' has shape [1, 2]" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ENGINES)
def test_outputs_that_ignore_the_batch_never_become_rows(tmp_path, write_tfrecords, engine):
    model_dir = batch_ignoring_export(str(tmp_path / "dynamic"), static=False)
    records = [make_example({"x": [float(i), 1.0]}).SerializeToString() for i in range(20)]
    path = write_tfrecords("x.tfrecord", records)
    rows, dead = run(["--input", path, "--model", model_dir, "--engine", engine, "--max_batch_size", "8",
                      "--max_dead_letter_fraction", "1"], str(tmp_path / "rows"))  # all dead, on purpose
    assert rows == {} and len(dead) == 20  # every record accounted for, none as a wrong row
    assert {(d["stage"], d["error_type"]) for d in dead} == {("infer", "OutputBatchError")}
    assert "the model ignores the batch" in dead[0]["error"]


@pytest.fixture(scope="module")
def trainer_export(tmp_path_factory):
    from tests.support.foreign_models import tf_keras_trainer_export

    return tf_keras_trainer_export(str(tmp_path_factory.mktemp("trainer") / "serving_model_dir" / "1"))


def test_the_fast_engine_falls_back_to_the_tf1_loader(trainer_export, linear_input, tmp_path, monkeypatch):
    """TFX users report tf.saved_model.load failing on Trainer exports ("'_UserObject' object has
    no attribute 'add_slot'"). The tf-keras export built here (slots and all) loads on TF 2.21, so
    the TF2 loader's failure is simulated: a fake, for the one thing no local export reproduced.
    The fast engine then loads the model with the TF1 loader and gives the same rows."""
    from models.serving.engines import SessionSignatureCall
    from transforms.scoring import engines

    model_dir, keras_model = trainer_export

    def tf2_loader_fails(*args, **kwargs):
        raise AttributeError("'_UserObject' object has no attribute 'add_slot'")

    monkeypatch.setattr(tf.saved_model, "load", tf2_loader_fails)
    monkeypatch.setattr(engines, "_CACHE", {})
    call = engines.load_batch_call("fast", model_dir, "serving_default")
    assert isinstance(call, SessionSignatureCall)
    path, records = linear_input
    np.testing.assert_allclose(call(records[:len(XS)])["y"], keras_model(np.float32(XS)).numpy(), rtol=1e-6)
    rows, dead = run(["--input", path, "--model", model_dir], str(tmp_path / "rows"))
    assert len(rows) == len(XS) and [d["stage"] for d in dead] == ["decode"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_tf_keras_trainer_export_is_scored_by_both_engines(trainer_export, linear_input, tmp_path, engine):
    model_dir, keras_model = trainer_export
    path, records = linear_input
    rows, dead = run(["--input", path, "--model", model_dir, "--engine", engine], str(tmp_path / "rows"))
    expected = keras_model(np.float32(XS)).numpy()
    assert len(rows) == len(XS) and [d["stage"] for d in dead] == ["decode"]
    for i in range(len(XS)):
        np.testing.assert_allclose(rows[f"linear.tfrecord:{i}"]["model"]["y"], expected[i], rtol=1e-6)


def test_inspect_says_which_engines_run_a_model(trainer_export, padded_base, tmp_path):
    from models.inspect import engine_report, inspect_report

    report = engine_report(trainer_export[0])
    assert report["fast"] == (True, "OK (FastSignatureCall: y)") and report["tfx-bsl"][0]
    text, ok = inspect_report(padded_base, "classify")
    assert ok and "fast: OK (FastSignatureCall: classes, scores)" in text
    ignoring = batch_ignoring_export(str(tmp_path / "ignoring"), static=False)
    report = engine_report(ignoring)
    assert not report["fast"][0] and "OutputBatchError" in report["fast"][1]
    assert not report["tfx-bsl"][0] and "the model ignores the batch" in report["tfx-bsl"][1]


@pytest.mark.parametrize("engine", ENGINES)
def test_bulkinferrer_examples_output(padded_base, linear_input, tmp_path, engine):
    """--output_format examples: each input example with the chosen outputs added as features."""
    path, records = linear_input
    out = str(tmp_path / "examples")
    batch_infer.run(["--input", path, "--model", padded_base, "--engine", engine, "--output_format", "examples",
                     "--output_features", "score=score_pred,double", "--output_compression", "gzip",
                     "--output", out], save_main_session=False)
    (shard,) = glob.glob(out + "-*.tfrecord.gz")
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard, "GZIP")]
    expected = expected_linear(XS)
    by_x = {tuple(e.features.feature["x"].float_list.value): e for e in examples}
    assert len(examples) == len(XS)
    for i, x in enumerate(XS):
        features = by_x[tuple(np.float32(x))].features.feature
        assert set(features) == {"x", "score_pred", "double"}
        np.testing.assert_allclose(features["score_pred"].float_list.value, [expected["score"][i]], rtol=1e-6)
        np.testing.assert_allclose(features["double"].float_list.value, expected["double"][i], rtol=1e-6)
    assert [d["stage"] for d in read_jsonl(out + ".errors-*.jsonl")] == ["decode"]
