"""The portability report (models.portability, printed by models.inspect): each verdict on a model
that passes and one that fails, all written here: a TF1 linear export, a TF2 module, a Keras
model.export(), TF1 exports with sparse, ragged and complex outputs, and copies of them whose
saved_model.pb was edited (a made-up op type, an old GraphDef version, another TensorFlow
version), which the static checks read as they would a real model's.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from models import inspect as inspect_cli
from models import portability
from models.inspect import inspect_model
from models.preparation import warmup
from models.serving import examples as ex
from models.serving.contract import serving_meta_graph
from models.serving.fingerprint import saved_model_fingerprint
from tests.support.foreign_models import (batch_ignoring_export, expected_linear, tf1_linear_export,
                                          tf2_module_export)

TARGETS = ["fast", "tfx-bsl", "TF Serving", "BigQuery ML", "Vertex AI"]


def facts_of(path, signature="serving_default"):
    from models.serving import layout

    version_dir = layout.resolve_version_dir(path)
    return portability.model_facts(path, version_dir, serving_meta_graph(version_dir), signature,
                                   saved_model_fingerprint(version_dir)["bytes"])


def edited_copy(src, dst, edit):
    """A copy of the SavedModel at src whose serving meta graph edit(meta_graph) changed."""
    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(src, dst)
    path = os.path.join(dst, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved.ParseFromString(f.read())
    edit(saved.meta_graphs[0])
    with open(path, "wb") as f:
        f.write(saved.SerializeToString())
    return dst


def add_made_up_op(meta_graph):
    """A node of op type MadeUpOp inside the function the signature calls (where a TF2 export keeps
    the model), as an op library's op would appear."""
    output = next(iter(meta_graph.signature_def["serving_default"].outputs.values())).name.split(":")[0]
    (call,) = [n for n in meta_graph.graph_def.node if n.name == output]
    (function,) = [f for f in meta_graph.graph_def.library.function if f.signature.name == call.attr["f"].func.name]
    function.node_def.add(name="made_up", op="MadeUpOp")


def _tf1_export(export_dir, outputs_fn):
    """A TF1 export of serialized tf.Example (tokens: int64 varlen) with the outputs outputs_fn
    builds from the parsed SparseTensor."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="examples")
        tokens = v1.parse_example(serialized, {"tokens": v1.VarLenFeature(tf.int64)})["tokens"]
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"examples": info(serialized)},
            outputs={name: info(t) for name, t in outputs_fn(tokens).items()},
            method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
            builder.save()
    return export_dir


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("portability")


@pytest.fixture(scope="module")
def linear_base(work):
    """TF Serving's layout: base/1/saved_model.pb."""
    tf1_linear_export(str(work / "linear"), "1")
    return str(work / "linear")


@pytest.fixture(scope="module")
def bare_module(work):
    """A TF2 module saved straight into a directory that is not a version number."""
    return tf2_module_export(str(work / "bare_module"), input_name="examples")


@pytest.fixture(scope="module")
def made_up_op(work, bare_module):
    return edited_copy(bare_module, str(work / "made_up" / "1"), add_made_up_op)


@pytest.fixture(scope="module")
def dense_base(work):
    import keras

    keras.utils.set_random_seed(5)
    x = keras.Input(shape=(4,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, name="y")(x))
    model.export(str(work / "dense" / "1"), verbose=False)
    return str(work / "dense"), model


def serialized(xs):
    return [ex.make_example({"x": x}).SerializeToString() for x in xs]


# --------------------------------------------------------------------------------------------
# the report: one line per target, in text and in --json
# --------------------------------------------------------------------------------------------

def test_the_text_report_has_one_portability_line_per_target(linear_base):
    text, ok = inspect_cli.inspect_report(linear_base)
    assert ok
    lines = text.splitlines()
    start = lines.index("portability:")
    assert [line.split(":")[0].strip() for line in lines[start + 1:start + 6]] == TARGETS
    assert all(line.split(": ", 1)[1].startswith(("OK", "no: ")) for line in lines[start + 1:start + 6])


def test_json_prints_the_whole_report_and_keeps_the_exit_codes(linear_base, dense_base, tmp_path, capsys):
    assert inspect_cli.main([linear_base, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    version_dir = os.path.join(linear_base, "1")
    meta_graph = serving_meta_graph(version_dir)
    assert report["saved_model"] == version_dir and report["runnable"] is True
    assert report["sha256"] == saved_model_fingerprint(version_dir)["sha256"]
    assert report["tensorflow_version"] == tf.version.VERSION  # the export was written here
    assert sorted(report["signatures"]) == sorted(meta_graph.signature_def)
    assert report["signatures"]["serving_default"]["inputs"] == {
        "examples": {"dtype": "string", "shape": [None], "kind": "dense"}}
    assert report["feature_spec"]["source"] == "signature"
    assert report["contract"] == {"signature": "serving_default", "ok": True, "problems": []}
    assert {e: r["runs"] for e, r in report["engines"].items()} == {"fast": True, "tfx-bsl": True}
    assert [v["target"] for v in report["portability"]] == TARGETS
    assert set(report["portability"][0]) == {"target", "ok", "reasons", "notes"}
    # a dense export: runnable on the fast engine, its spec from its inputs, a portability report
    assert inspect_cli.main([dense_base[0], "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert dense["runnable"] is True and dense["takes"] == "tensors"
    assert dense["feature_spec"]["source"] == "signature inputs"
    assert {e: r["runs"] for e, r in dense["engines"].items()} == {"fast": True, "tfx-bsl": False}
    assert [v["target"] for v in dense["portability"]] == TARGETS
    assert "tensorflow/tfx-bsl#29" in dense["contract"]["problems"][0]
    # an error: exit 2, nothing on stdout
    assert inspect_cli.main([str(tmp_path / "nowhere"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "does not exist" in captured.err


# --------------------------------------------------------------------------------------------
# our engines: from engine_report and the contract, the model loaded once
# --------------------------------------------------------------------------------------------

def test_engine_verdicts_pass_on_a_model_both_engines_run(linear_base):
    from models.preparation import verify

    xs = [[1.0, 2.0], [-3.0, 0.5]]
    np.testing.assert_allclose(verify.run_tfx_bsl(os.path.join(linear_base, "1"), serialized(xs))["score"],
                               expected_linear(xs)["score"], rtol=1e-6)
    np.testing.assert_allclose(verify.run_tf2(os.path.join(linear_base, "1"), serialized(xs))["score"],
                               expected_linear(xs)["score"], rtol=1e-6)
    verdicts = {v["target"]: v for v in inspect_model(linear_base).data["portability"]}
    assert verdicts["fast"] == {"target": "fast", "ok": True, "reasons": [], "notes": []}
    assert verdicts["tfx-bsl"] == {"target": "tfx-bsl", "ok": True, "reasons": [], "notes": []}


def test_engine_verdicts_fail_with_what_the_engine_said(work):
    """A model whose output ignores the batch: both engines load it and refuse its outputs."""
    ignoring = batch_ignoring_export(str(work / "ignoring"), static=False)
    # its output really has one row whatever the batch
    y = tf.saved_model.load(ignoring).signatures["serving_default"](
        examples=tf.constant(serialized([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])))["y"]
    assert y.shape[0] == 1
    report = inspect_model(ignoring).data["portability"]
    fast, tfx_bsl = report[0], report[1]
    assert fast["target"] == "fast" and not fast["ok"] and "OutputBatchError" in fast["reasons"][0]
    assert tfx_bsl["target"] == "tfx-bsl" and not tfx_bsl["ok"] and "ignores the batch" in tfx_bsl["reasons"][0]


def test_a_tf_module_export_is_fast_only_and_the_tfx_bsl_verdict_says_why(work):
    import keras

    from models.preparation import verify

    keras.utils.set_random_seed(3)
    x = keras.Input(shape=(2,), name="x")
    model = keras.Model(x, keras.layers.Dense(1)(x))

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            return {"y": self.model(tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"])}

    module = Serving()
    path = str(work / "module" / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with pytest.raises(Exception, match="Could not find variable"):
        verify.run_tfx_bsl(path, serialized([[1.0, 2.0]]))
    verdicts = {v["target"]: v for v in inspect_model(path).data["portability"]}
    assert verdicts["fast"]["ok"] and not verdicts["tfx-bsl"]["ok"]
    assert "Could not find variable" in verdicts["tfx-bsl"]["reasons"][0]


def test_a_dense_export_gets_engine_verdicts_and_the_portability_section(dense_base, capsys):
    base, model = dense_base
    assert inspect_cli.main([base]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    section = lines[lines.index("portability:") + 1:lines.index("portability:") + 6]
    assert section[0] == "  fast: OK"
    assert section[1].startswith("  tfx-bsl: no: refused: the signature takes tensors")
    # TF Serving and BigQuery ML take float32 tensors as they are; the export does compute the model
    loaded = tf.saved_model.load(os.path.join(base, "1"))
    x = np.float32([[1, 2, 3, 4]])
    np.testing.assert_allclose(loaded.signatures["serving_default"](x=tf.constant(x))["output_0"], model(x),
                               rtol=1e-6)
    assert section[2].startswith("  TF Serving: OK") and section[3] == "  BigQuery ML: OK"


# --------------------------------------------------------------------------------------------
# TF Serving: core ops, the base/<version>/ layout, the warmup file
# --------------------------------------------------------------------------------------------

def test_tf_serving_takes_a_base_directory_and_notes_a_missing_warmup_file(linear_base):
    verdict = portability.tf_serving_verdict(facts_of(linear_base))
    assert verdict.ok and verdict.reasons == ()
    assert not os.path.exists(os.path.join(linear_base, "1", warmup.WARMUP_FILE))
    assert len(verdict.notes) == 1 and warmup.WARMUP_FILE in verdict.notes[0]
    assert verdict.text().startswith("OK (note: no assets.extra/tf_serving_warmup_requests")
    # the version directory given itself is fine too: its name is a number
    assert portability.tf_serving_verdict(facts_of(os.path.join(linear_base, "1"))).ok


def test_tf_serving_refuses_a_bare_saved_model_and_the_advice_works(bare_module, tmp_path):
    verdict = portability.tf_serving_verdict(facts_of(bare_module))
    assert not verdict.ok
    (reason,) = verdict.reasons
    assert f"{bare_module} is a bare SavedModel" in reason and "copy it to BASE/1/" in reason
    base = tmp_path / "base"
    shutil.copytree(bare_module, base / "1")
    assert portability.tf_serving_verdict(facts_of(str(base))).ok


def test_tf_serving_refuses_an_op_that_stock_tensorflow_does_not_define(made_up_op, bare_module):
    with pytest.raises(Exception, match="MadeUpOp"):  # the edit is real: this TensorFlow cannot load it
        tf.saved_model.load(made_up_op)
    assert "MadeUpOp" not in portability.tf_serving_verdict(facts_of(bare_module)).text()
    verdict = portability.tf_serving_verdict(facts_of(os.path.dirname(made_up_op)))
    assert not verdict.ok
    assert verdict.reasons == ("uses op types that stock TensorFlow does not define (MadeUpOp): they come from an "
                               "op library, which this target cannot load",)


def test_tf_serving_with_a_warmup_file_it_can_replay_and_one_it_cannot(linear_base, tmp_path):
    good = str(tmp_path / "good" / "1")
    shutil.copytree(os.path.join(linear_base, "1"), good)
    warmup.write_warmup(good, warmup.warmup_logs(serialized([[1.0, 2.0], [0.0, 1.0]]), "predict", "serving_default"))
    np.testing.assert_allclose([r["score"][0] for r in warmup.replay(good)],
                               expected_linear([[1.0, 2.0], [0.0, 1.0]])["score"], rtol=1e-6)
    verdict = portability.tf_serving_verdict(facts_of(os.path.dirname(good)))
    assert verdict.ok and verdict.notes == ()
    # a request for a signature the model does not have: TF Serving's warmup fails the load
    wrong = str(tmp_path / "wrong" / "1")
    shutil.copytree(os.path.join(linear_base, "1"), wrong)
    warmup.write_warmup(wrong, warmup.warmup_logs(serialized([[1.0, 2.0]]), "predict", "nope"))
    with pytest.raises(ValueError, match="nope"):
        warmup.replay(wrong)
    verdict = portability.tf_serving_verdict(facts_of(os.path.dirname(wrong)))
    assert not verdict.ok and "['nope']" in verdict.reasons[0]
    # a record that is not a PredictionLog
    garbled = str(tmp_path / "garbled" / "1")
    shutil.copytree(os.path.join(linear_base, "1"), garbled)
    os.makedirs(os.path.join(garbled, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(garbled, warmup.WARMUP_FILE)) as writer:
        writer.write(b"\xff not a PredictionLog")
    verdict = portability.tf_serving_verdict(facts_of(os.path.dirname(garbled)))
    assert not verdict.ok and "warmup file cannot be read" in verdict.reasons[0]


def test_tf_serving_warmup_record_limit(linear_base):
    facts = facts_of(linear_base)
    assert portability.tf_serving_verdict(dataclasses.replace(facts, warmup_records=1000)).ok
    verdict = portability.tf_serving_verdict(dataclasses.replace(facts, warmup_records=1001))
    assert not verdict.ok and "1001 records" in verdict.reasons[0]


# --------------------------------------------------------------------------------------------
# BigQuery ML's TensorFlow import
# --------------------------------------------------------------------------------------------

def test_bigquery_ml_takes_a_tf_example_model_and_a_dense_one(linear_base, dense_base):
    assert portability.bigquery_ml_verdict(facts_of(linear_base)) == portability.Verdict("BigQuery ML", True)
    assert portability.bigquery_ml_verdict(facts_of(dense_base[0])).ok


def test_bigquery_ml_size_limit_is_450_mb():
    assert portability.bigquery_ml_size_reasons(450_000_000) == []
    (reason,) = portability.bigquery_ml_size_reasons(450_000_001)
    assert "450,000,001 bytes" in reason and "450 MB" in reason


def test_bigquery_ml_verdict_on_the_size_of_a_real_model(linear_base):
    facts = facts_of(linear_base)
    assert facts.size_bytes == sum(os.path.getsize(os.path.join(d, f))
                                   for d, _, files in os.walk(os.path.join(linear_base, "1")) for f in files)
    assert not portability.bigquery_ml_verdict(dataclasses.replace(facts, size_bytes=500 * 1000 * 1000)).ok
    noted = portability.bigquery_ml_verdict(dataclasses.replace(facts, size_bytes=300 * 1000 * 1000))
    assert noted.ok and "typically 250 MB" in noted.notes[0]


def test_bigquery_ml_takes_sparse_outputs_and_refuses_ragged_ones(work):
    sparse = _tf1_export(str(work / "sparse" / "1"), lambda tokens: {"tokens": tokens})
    ragged = _tf1_export(str(work / "ragged" / "1"), lambda tokens: {"tokens": tf.RaggedTensor.from_sparse(tokens)})
    kinds = {t.name: t.kind for t in facts_of(ragged).tensors if t.side == "output"}
    assert kinds == {"tokens": "ragged"}
    assert portability.bigquery_ml_verdict(facts_of(sparse)).ok
    verdict = portability.bigquery_ml_verdict(facts_of(ragged))
    assert verdict.reasons == ("output 'tokens' is a RaggedTensor; BigQuery ML does not support RaggedTensors",)


def test_bigquery_ml_refuses_a_complex_output(work):
    path = _tf1_export(str(work / "complex" / "1"), lambda tokens: {
        "z": tf.complex(tf.cast(tf.sparse.reduce_sum(tokens, axis=1), tf.float32), 1.0)})
    (z,) = [t for t in facts_of(path).tensors if t.name == "z"]
    assert z.dtype == tf.complex64.name
    verdict = portability.bigquery_ml_verdict(facts_of(path))
    assert verdict.reasons == ("output 'z' is complex64; BigQuery ML does not support that type",)


def test_bigquery_ml_refuses_non_core_ops_old_graphdefs_and_unreleased_tensorflow(made_up_op, linear_base, work):
    assert "MadeUpOp" in portability.bigquery_ml_verdict(facts_of(made_up_op)).reasons[0]
    version_dir = os.path.join(linear_base, "1")

    def producer(version):
        return lambda meta_graph: setattr(meta_graph.graph_def.versions, "producer", version)
    old = edited_copy(version_dir, str(work / "graphdef19" / "1"), producer(19))
    assert serving_meta_graph(old).graph_def.versions.producer == 19
    assert portability.bigquery_ml_verdict(facts_of(old)).reasons == (
        "its GraphDef version is 19; BigQuery ML needs 20 or later",)
    assert portability.bigquery_ml_verdict(facts_of(edited_copy(version_dir, str(work / "graphdef20" / "1"),
                                                                producer(20)))).ok

    def saved_by(version):
        return lambda meta_graph: setattr(meta_graph.meta_info_def, "tensorflow_version", version)
    nightly = edited_copy(version_dir, str(work / "nightly" / "1"), saved_by("2.22.0-dev20260301"))
    assert "2.22.0-dev20260301, not a released version" in portability.bigquery_ml_verdict(facts_of(nightly)).reasons[0]


# --------------------------------------------------------------------------------------------
# Vertex AI's prebuilt TensorFlow containers
# --------------------------------------------------------------------------------------------

def test_vertex_ai_refuses_a_model_saved_by_a_tensorflow_newer_than_its_containers(linear_base):
    facts = facts_of(linear_base)
    assert facts.tensorflow_version == tf.version.VERSION
    newer = tuple(int(p) for p in tf.version.VERSION.split(".")[:2]) > (2, 15)
    verdict = portability.vertex_ai_verdict(facts)
    assert verdict.ok is not newer
    if newer:
        assert f"saved by TensorFlow {tf.version.VERSION}" in verdict.reasons[0]
        assert "tf2-cpu.2-15" in verdict.reasons[0]


@pytest.mark.parametrize("version, ok", [("2.15.1", True), ("2.14.0", True), ("1.15.5", True),
                                         ("2.16.2", False), ("3.0.0", False)])
def test_vertex_ai_takes_a_model_saved_by_a_tensorflow_its_containers_load(linear_base, work, version, ok):
    path = edited_copy(os.path.join(linear_base, "1"), str(work / f"saved_by_{version}" / "1"),
                       lambda meta_graph: setattr(meta_graph.meta_info_def, "tensorflow_version", version))
    assert serving_meta_graph(path).meta_info_def.tensorflow_version == version
    assert portability.vertex_ai_verdict(facts_of(path)).ok is ok


def test_vertex_ai_refuses_custom_ops(made_up_op, work):
    old_enough = edited_copy(made_up_op, str(work / "made_up_2_15" / "1"),
                             lambda meta_graph: setattr(meta_graph.meta_info_def, "tensorflow_version", "2.15.0"))
    verdict = portability.vertex_ai_verdict(facts_of(old_enough))
    assert not verdict.ok
    assert verdict.reasons[0].startswith("uses op types that stock TensorFlow does not define (MadeUpOp)")
