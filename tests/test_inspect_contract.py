"""The tfx-bsl contract check (models.serving.contract), the inspect CLI, loading prepared models
(models.serving.model) and reading a feature spec back from a signature (models.serving.signature_spec),
on real SavedModels written here: the broken tf.Module way, our prepare_model way, a dense
model.export, and hand-written ExportArchive signatures.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from models.serving import examples as ex
from models import inspect as inspect_cli
from models.preparation import verify
from models.serving.contract import contract_problems, unrestored_variables, serving_meta_graph
from models.serving.feature_spec import SPEC_FILE, Feature
from models.prepare import prepare_model
from models.serving.model import ModelContractError, load_serving_model, read_feature_spec
from models.serving.signature_spec import spec_from_signature
from transforms.graph.model import GraphError, parallel_graph

ROWS = [[1.0, 2.0, 3.0], [-0.5, 0.0, 4.0]]


def small_model():
    import keras

    keras.utils.set_random_seed(31)
    x = keras.Input(shape=(3,), name="x")
    return keras.Model(x, keras.layers.Dense(2, name="dense")(x))


def serialized_rows():
    return [ex.make_example({"x": r}).SerializeToString() for r in ROWS]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(scope="module")
def keras_model():
    return small_model()


@pytest.fixture(scope="module")
def broken_dir(workdir, keras_model):
    """The broken way: a Keras 3 model in a tf.Module whose @tf.function parses tf.Example."""

    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            parsed = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([3], tf.float32)})
            return {"y": self.model(parsed["x"])}

    module = Serving(keras_model)
    path = str(workdir / "broken")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def prepared_dir(workdir, keras_model):
    return prepare_model(keras_model, str(workdir / "prepared"))


@pytest.fixture(scope="module")
def dense_dir(workdir, keras_model):
    path = str(workdir / "dense")
    keras_model.export(path, verbose=False)
    return path


# --------------------------------------------------------------------------------------------
# the broken tf.Module export
# --------------------------------------------------------------------------------------------

def test_contract_reports_the_tf_module_export(broken_dir):
    problems = contract_problems(broken_dir)
    assert len(problems) == 1
    assert "Could not find variable" in problems[0] and "tf.Module" in problems[0]
    assert "dense/bias" in problems[0] and "dense/kernel" in problems[0]
    assert unrestored_variables(serving_meta_graph(broken_dir), "serving_default") == [
        "dense/bias", "dense/kernel"]


def test_inspect_cli_says_only_the_fast_engine_runs_the_tf_module_export(broken_dir, capsys):
    assert inspect_cli.main([broken_dir]) == 0  # an engine runs it
    out = capsys.readouterr().out
    assert "tfx-bsl contract (serving_default): FAILS" in out
    assert "Could not find variable" in out
    assert "runs with --engine fast only" in out
    assert "examples: string [None]" in out  # the signature itself looks right
    assert "x: float32[3] (required)" in out  # the spec is read from the parse op


def test_the_finding_is_real_tf2_loads_it_but_tfx_bsl_cannot_run_it(broken_dir, keras_model):
    # TF2 loading works and gives the model's numbers ...
    expected = np.asarray(keras_model(np.asarray(ROWS, dtype=np.float32)))
    np.testing.assert_allclose(verify.run_tf2(broken_dir, serialized_rows())["y"], expected, rtol=1e-6)
    # ... but tfx-bsl's TF1 session loader fails on the variables, as the contract check said
    with pytest.raises(Exception, match="Could not find variable"):
        verify.run_tfx_bsl(broken_dir, serialized_rows())


def test_the_tf_module_export_is_refused_only_for_the_tfx_bsl_engine(broken_dir):
    model = load_serving_model(broken_dir, name="broken")
    assert "Could not find variable" in model.tf1_loader_problems[0]
    assert parallel_graph([model], engine="fast").nodes[0].engine == "fast"
    with pytest.raises(GraphError, match=r"model 'broken' at .*: the tfx-bsl engine cannot run it: .*"
                                         r"Could not find variable.*the fast engine runs it"):
        parallel_graph([model], engine="tfx-bsl")


def test_the_fast_engine_scores_the_tf_module_export_end_to_end(broken_dir, keras_model, tmp_path, capsys):
    from pipelines import batch_infer
    from tests.helpers import write_tfrecord_file

    path = write_tfrecord_file(str(tmp_path / "rows.tfrecord"), serialized_rows())
    out = str(tmp_path / "pred")
    assert batch_infer.main(["--input", path, "--model", f"broken={broken_dir}", "--output", out]) == 0
    with open(out + "-00000-of-00001.jsonl") as f:
        rows = [json.loads(line) for line in f]
    expected = np.asarray(keras_model(np.asarray(ROWS, dtype=np.float32)))
    np.testing.assert_allclose([r["broken"]["y"] for r in sorted(rows, key=lambda r: int(r["key"].split(":")[1]))],
                               expected, rtol=1e-6)
    assert batch_infer.main(["--input", path, "--model", f"broken={broken_dir}", "--output", out,
                             "--engine", "tfx-bsl"]) == 2
    assert "the tfx-bsl engine cannot run it" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# prepared and dense exports
# --------------------------------------------------------------------------------------------

def test_prepared_export_passes(prepared_dir, capsys):
    assert contract_problems(prepared_dir) == []
    assert inspect_cli.main([prepared_dir]) == 0
    out = capsys.readouterr().out
    assert "tfx-bsl contract (serving_default): OK" in out
    assert "FAILS" not in out
    assert "feature spec (from feature_spec.json):" in out
    assert "serving_dense" in out and "serving_default" in out


def test_load_serving_model_of_a_prepared_export(prepared_dir):
    model = load_serving_model(prepared_dir, name="m")
    assert model.path == prepared_dir and model.version == 1
    assert model.spec_source == "feature_spec.json"
    assert [(f.name, f.dtype, f.shape, f.required) for f in model.feature_spec] == [
        ("x", "float32", (3,), True)]
    assert model.outputs == ("dense",)
    assert model.method == tf.saved_model.PREDICT_METHOD_NAME
    # the base directory resolves to the same version
    assert load_serving_model(os.path.dirname(prepared_dir)).path == prepared_dir


def test_dense_export_fails_the_tfx_bsl_contract_because_of_its_input(dense_dir, capsys):
    problems = contract_problems(dense_dir)
    assert len(problems) == 1
    assert "input 'x' is float32" in problems[0] and "DT_STRING" in problems[0]
    assert contract_problems(dense_dir, tensor_inputs=True) == []  # the fast engine feeds it
    assert inspect_cli.main([dense_dir]) == 0
    assert "tfx-bsl contract (serving_default): FAILS" in capsys.readouterr().out


def test_a_dense_export_loads_with_the_feature_spec_its_inputs_give(dense_dir):
    model = load_serving_model(dense_dir)
    assert model.input_tensors == ("x",) and model.spec_source == "signature inputs"
    assert [(f.name, f.dtype, f.shape, f.model_dtype, f.required) for f in model.feature_spec] == [
        ("x", "float32", (3,), "float32", True)]
    assert model.engine_spec == model.feature_spec


def test_inspect_of_a_dense_export_says_what_it_takes_and_that_the_fast_engine_scores_it(dense_dir, tmp_path, capsys):
    assert inspect_cli.main([dense_dir]) == 0
    out = capsys.readouterr().out
    assert "takes (serving_default): tensors, not serialized tf.Example" in out
    assert "  x: float32[3] (required)" in out  # the spec its input gives
    assert "  fast: OK (FastSignatureCall: " in out and "runs with --engine fast only" in out
    # tfx-bsl's reason and both ways out, said once
    assert out.count("tensorflow/tfx-bsl#29") == 1 and out.count("python -m models.prepare") == 1
    assert "score it with --engine fast" in out
    # the other way out works: the prepared export is scored by both engines
    base = str(tmp_path / "prepared")
    prepare_model(dense_dir, base)
    assert inspect_cli.main([base]) == 0
    out = capsys.readouterr().out
    assert "fast: OK" in out and "tfx-bsl: OK" in out


def test_inspect_of_the_dense_signature_of_a_prepared_export_runs_it_on_the_fast_engine(prepared_dir, capsys):
    assert inspect_cli.main([prepared_dir, "--signature", "serving_dense"]) == 0
    out = capsys.readouterr().out
    assert "engines (serving_dense)" in out and "  fast: OK" in out and "runs with --engine fast only" in out


def test_contract_reports_a_missing_signature(prepared_dir):
    assert contract_problems(prepared_dir, "nope") == [
        f"no signature 'nope'; the model has {sorted(serving_meta_graph(prepared_dir).signature_def)}"]
    # serving_dense takes the dense input: a float32 input, as for a model.export
    (problem,) = contract_problems(prepared_dir, "serving_dense")
    assert "input 'x' is float32" in problem


# --------------------------------------------------------------------------------------------
# load_serving_model: what it refuses, which version it picks
# --------------------------------------------------------------------------------------------

def test_load_serving_model_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ModelContractError, match="does not exist"):
        load_serving_model(str(tmp_path / "nowhere"))


def test_load_serving_model_refuses_a_directory_without_a_saved_model(tmp_path):
    (tmp_path / "base" / "1").mkdir(parents=True)  # a version directory, but empty
    (tmp_path / "base" / "notes.txt").write_text("hi")
    with pytest.raises(ModelContractError, match="holds no SavedModel"):
        load_serving_model(str(tmp_path / "base"))
    assert inspect_cli.main([str(tmp_path / "base")]) == 2


def test_base_directory_resolves_to_the_highest_version(tmp_path, prepared_dir, hand_dir):
    base = tmp_path / "base"
    shutil.copytree(prepared_dir, base / "1")
    shutil.copytree(hand_dir, base / "3")
    (base / "7").mkdir()  # no SavedModel in it: not a version
    shutil.copytree(prepared_dir, base / "10a")  # not an integer name: not a version
    model = load_serving_model(str(base))
    assert model.path == str(base / "3") and model.version == 3
    assert model.spec_source == "signature"  # it is the hand-written model, not the prepared one
    assert load_serving_model(str(base / "1")).version == 1


# --------------------------------------------------------------------------------------------
# reading the feature spec back from a hand-written tf.Example signature
# --------------------------------------------------------------------------------------------

def _write_hand_signature(path, keras_model, parse_spec_fn, serve_body):
    """A TF2 signature written directly with ExportArchive (no models.preparation.export involved).

    parse_spec_fn is called inside the traced function, so tensors it makes are graph constants.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(keras_model)

    def serve(examples):
        return serve_body(tf.io.parse_example(examples, parse_spec_fn()))

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    archive.write_out(path, verbose=False)
    return path


# what the hand-written signatures below parse, as our spec
HAND_SPEC = (
    Feature("r", "float32", (3,)),
    Feature("a", "float32", (2,), default=[0.5, -1.0]),
    Feature("n", "int64", (), default=7),
    Feature("s", "string", (1,), default=["q"]),
    Feature("g", "int64", (2, 2)),
)


def _hand_body(keras_model):
    def body(p):
        extra = (tf.reduce_sum(p["a"], -1, keepdims=True)
                 + tf.cast(tf.expand_dims(p["n"], -1), tf.float32)
                 + tf.cast(tf.strings.length(p["s"]), tf.float32)
                 + tf.cast(tf.reduce_sum(p["g"], [1, 2])[:, None], tf.float32))
        return {"y": keras_model(p["r"]) + extra}
    return body


def _by_name(spec):
    return {f.name: f for f in spec}


@pytest.fixture(scope="module")
def hand_dir(workdir, keras_model):
    """Defaults given as tensors: they reach the parse op as constants."""
    parse_spec = lambda: {  # noqa: E731
        "r": tf.io.FixedLenFeature([3], tf.float32),
        "a": tf.io.FixedLenFeature([2], tf.float32, default_value=tf.constant([0.5, -1.0])),
        "n": tf.io.FixedLenFeature([], tf.int64, default_value=tf.constant(7, tf.int64)),
        "s": tf.io.FixedLenFeature([1], tf.string, default_value=tf.constant(["q"])),
        "g": tf.io.FixedLenFeature([2, 2], tf.int64),
    }
    return _write_hand_signature(str(workdir / "hand"), keras_model, parse_spec, _hand_body(keras_model))


@pytest.fixture(scope="module")
def hand_dir_python_defaults(workdir, keras_model):
    """Defaults given as Python values, the way tutorials and TFX write them."""
    parse_spec = lambda: {  # noqa: E731
        "r": tf.io.FixedLenFeature([3], tf.float32),
        "a": tf.io.FixedLenFeature([2], tf.float32, default_value=[0.5, -1.0]),
        "n": tf.io.FixedLenFeature([], tf.int64, default_value=7),
        "s": tf.io.FixedLenFeature([1], tf.string, default_value=["q"]),
        "g": tf.io.FixedLenFeature([2, 2], tf.int64),
    }
    return _write_hand_signature(str(workdir / "hand_py"), keras_model, parse_spec,
                                 _hand_body(keras_model))


def test_hand_written_signature_meets_the_contract_and_runs_in_tfx_bsl(hand_dir, keras_model):
    assert contract_problems(hand_dir) == []
    serialized = [ex.make_example({"r": [1.0, 2.0, 3.0], "g": [[1, 2], [3, 4]]}).SerializeToString(),
                  ex.make_example({"r": [0.0, 0.0, 1.0], "a": [1.0, 1.0], "n": 1, "s": ["xyz"],
                                   "g": [[0, 0], [0, 1]]}).SerializeToString()]
    base = np.asarray(keras_model(np.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], np.float32)))
    expected = base + np.asarray([[-0.5 + 7 + 1 + 10], [2.0 + 1 + 3 + 1]], np.float32)
    np.testing.assert_allclose(verify.run_tfx_bsl(hand_dir, serialized)["y"], expected, rtol=1e-6)
    np.testing.assert_allclose(verify.run_tf2(hand_dir, serialized)["y"], expected, rtol=1e-6)


def test_spec_from_signature_reads_back_the_written_spec(hand_dir):
    spec = spec_from_signature(hand_dir)
    assert _by_name(spec) == _by_name(HAND_SPEC)
    assert len(spec) == len(HAND_SPEC)


def test_read_feature_spec_falls_back_to_the_signature(hand_dir):
    assert not os.path.exists(os.path.join(hand_dir, SPEC_FILE))
    spec, source = read_feature_spec(hand_dir, "serving_default")
    assert source == "signature"
    assert _by_name(spec) == _by_name(HAND_SPEC)
    model = load_serving_model(hand_dir)
    assert model.spec_source == "signature" and _by_name(model.feature_spec) == _by_name(HAND_SPEC)


def test_spec_from_signature_reads_back_python_defaults(hand_dir_python_defaults):
    assert _by_name(spec_from_signature(hand_dir_python_defaults)) == _by_name(HAND_SPEC)


def test_read_feature_spec_prefers_the_spec_file(prepared_dir, tmp_path):
    spec, source = read_feature_spec(prepared_dir, "serving_default")
    assert source == "feature_spec.json"
    # without the file, the same spec comes from the parse op in the signature
    copy = str(tmp_path / "1")
    shutil.copytree(prepared_dir, copy)
    os.remove(os.path.join(copy, SPEC_FILE))
    from_signature, source = read_feature_spec(copy, "serving_default")
    assert source == "signature"
    assert [(f.name, f.dtype, f.shape, f.default) for f in from_signature] == [
        (f.name, f.dtype, f.shape, f.default) for f in spec]


def test_spec_from_signature_of_a_dense_signature_says_there_is_no_parse_op(dense_dir):
    with pytest.raises(ValueError, match="no ParseExample op"):
        spec_from_signature(dense_dir)
