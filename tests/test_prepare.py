"""Model preparation round trips: models.prepare exports real SavedModels from small Keras 3 models,
and the exports, run through tf.saved_model.load and through tfx-bsl, give what the in-memory
Keras model gives on the same values. No mocks, except one monkeypatch of our own
models.preparation.verify.run_tf2 to fake a loader-specific mismatch (marked where it is done).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from models.serving import examples as ex
from models.preparation import export, verify
from models.serving.contract import contract_problems
from models.serving.feature_spec import SPEC_FILE, Feature, spec_from_json
from models.prepare import VerificationError, main, prepare_model

RTOL = 1e-6


# --------------------------------------------------------------------------------------------
# the models (fixed seeds) and values to score with them
# --------------------------------------------------------------------------------------------

def single_float_model():
    import keras

    keras.utils.set_random_seed(11)
    x = keras.Input(shape=(4,), name="x", dtype="float32")
    hidden = keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(2, name="y")(hidden))


def multi_input_model():
    """Dict inputs: float vector [3], int64 scalar, string [2] (fed through tf.strings.length)."""
    import keras

    keras.utils.set_random_seed(12)
    vec = keras.Input(shape=(3,), name="vec", dtype="float32")
    count = keras.Input(shape=(), name="count", dtype="int64")
    words = keras.Input(shape=(2,), name="words", dtype="string")
    lengths = keras.layers.Lambda(
        lambda t: tf.cast(tf.strings.length(t), "float32"), output_shape=(2,), name="lengths")(words)
    count_f = keras.layers.Lambda(
        lambda t: tf.cast(tf.expand_dims(t, -1), "float32"), output_shape=(1,), name="count_f")(count)
    joined = keras.layers.Concatenate()([vec, lengths, count_f])
    score = keras.layers.Dense(2, name="score")(keras.layers.Dense(4, activation="relu")(joined))
    return keras.Model({"vec": vec, "count": count, "words": words}, score)


def int32_model():
    import keras

    keras.utils.set_random_seed(13)
    ids = keras.Input(shape=(3,), name="ids", dtype="int32")
    as_float = keras.layers.Lambda(lambda t: tf.cast(t, "float32") * 0.5, output_shape=(3,))(ids)
    return keras.Model(ids, keras.layers.Dense(2, name="out")(as_float))


def sequential_model():
    import keras

    keras.utils.set_random_seed(14)
    return keras.Sequential([keras.Input(shape=(4,), name="feats"),
                             keras.layers.Dense(3, activation="relu"),
                             keras.layers.Dense(1)])


def multi_output_model():
    """Named outputs of three kinds: probabilities, an int32 argmax, a regression value."""
    import keras

    keras.utils.set_random_seed(15)
    x = keras.Input(shape=(4,), name="x")
    hidden = keras.layers.Dense(6, activation="relu")(x)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    return keras.Model(x, {"probabilities": probabilities,
                           "label": keras.ops.argmax(probabilities, axis=-1),
                           "value": keras.layers.Dense(1, name="value")(hidden)})


def list_output_model():
    """Outputs as a list: exported under their layers' names."""
    import keras

    keras.utils.set_random_seed(16)
    x = keras.Input(shape=(4,), name="x")
    return keras.Model(x, [keras.layers.Dense(2, name="first")(x),
                           keras.layers.Dense(1, activation="sigmoid", name="second")(x)])


def keras_file_model():
    """Two inputs and no Lambda, so it survives a .keras save/load in safe mode."""
    import keras

    keras.utils.set_random_seed(17)
    x = keras.Input(shape=(4,), name="x")
    k = keras.Input(shape=(), name="k", dtype="int64")
    embedded = keras.layers.Embedding(3, 2, name="embed")(k)
    y = keras.layers.Dense(2, name="y")(keras.layers.Concatenate()([x, embedded]))
    return keras.Model({"x": x, "k": k}, {"y": y, "z": keras.layers.Dense(1, name="z")(x)})


FLOAT_ROWS = [{"x": [0.5, -1.0, 2.0, 0.0]}, {"x": [3.0, 1.5, -0.25, 7.0]}, {"x": [0.0] * 4}]

# name -> (builder, rows of feature values, expected feature spec, output names for non-dict outputs)
CASES = {
    "single_float": (single_float_model, FLOAT_ROWS,
                     [Feature("x", "float32", (4,))], ["y"]),
    "multi_input": (multi_input_model,
                    [{"vec": [0.1, 0.2, 0.3], "count": 5, "words": ["ab", "cde"]},
                     {"vec": [-1.0, 2.0, 0.0], "count": 0, "words": ["", "x"]},
                     {"vec": [4.0, -4.0, 1.0], "count": 123, "words": ["héllo", "wörld!"]}],
                    [Feature("count", "int64", ()), Feature("vec", "float32", (3,)),
                     Feature("words", "string", (2,))], ["score"]),
    "int32_input": (int32_model,
                    [{"ids": [1, 2, 3]}, {"ids": [-4, 0, 7]}, {"ids": [100000, -5, 2]}],
                    [Feature("ids", "int64", (3,), model_dtype="int32")], ["out"]),
    "sequential": (sequential_model, [{"feats": r["x"]} for r in FLOAT_ROWS],
                   [Feature("feats", "float32", (4,))], ["output_0"]),
    "multi_output": (multi_output_model, FLOAT_ROWS, [Feature("x", "float32", (4,))], None),
    "list_output": (list_output_model, FLOAT_ROWS, [Feature("x", "float32", (4,))],
                    ["first", "second"]),
}


def dense_inputs(model, rows):
    """The rows as the model's own input arrays, built from model.inputs (name and dtype)."""
    arrays = {}
    for tensor in model.inputs:
        dtype = object if tensor.dtype == "string" else tensor.dtype
        arrays[tensor.name] = np.asarray([row[tensor.name] for row in rows], dtype=dtype)
    return arrays


def call_keras(model, rows, output_names):
    """The expected outputs: the in-memory Keras model called directly."""
    arrays = dense_inputs(model, rows)
    outputs = model(arrays if len(arrays) > 1 else next(iter(arrays.values())), training=False)
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    assert len(outputs) == len(output_names)
    return {name: np.asarray(v) for name, v in zip(output_names, outputs)}


def serialize(rows, spec=None):
    return [ex.make_example(row, spec).SerializeToString() for row in rows]


def assert_same_outputs(actual, expected, label):
    assert set(actual) == set(expected), label
    for name in expected:
        got, want = np.asarray(actual[name]), np.asarray(expected[name])
        assert got.shape == want.shape, f"{label}: {name}"
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"{label}: {name}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{label}: {name}")


def assert_predicts_like(version_dir, model, rows, output_names, spec=None):
    serialized = serialize(rows, spec)
    expected = call_keras(model, rows, output_names)
    assert_same_outputs(verify.run_tf2(version_dir, serialized), expected, "tf.saved_model.load")
    assert_same_outputs(verify.run_tfx_bsl(version_dir, serialized), expected, "tfx-bsl")


def written_spec(version_dir):
    with open(os.path.join(version_dir, SPEC_FILE)) as f:
        return spec_from_json(json.load(f))


# --------------------------------------------------------------------------------------------
# round trips for several model shapes
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(CASES))
def prepared(request, tmp_path_factory):
    builder, rows, spec, output_names = CASES[request.param]
    model = builder()
    base = str(tmp_path_factory.mktemp(request.param))
    return base, prepare_model(model, base), model, rows, spec, output_names


def test_export_goes_to_version_1_with_an_examples_signature_and_a_dense_one(prepared):
    base, version_dir, *_ = prepared
    assert version_dir == os.path.join(base, "1")
    assert sorted(os.listdir(base)) == ["1"]  # the staging directory was renamed, nothing left over
    signatures = tf.saved_model.load(version_dir).signatures
    assert {"serving_default", "serving_dense"} <= set(signatures)
    args, kwargs = signatures["serving_default"].structured_input_signature
    assert args == ()
    assert list(kwargs) == ["examples"]
    assert kwargs["examples"].dtype == tf.string and kwargs["examples"].shape.as_list() == [None]
    assert contract_problems(version_dir) == []


def test_feature_spec_file_matches_the_model_inputs(prepared):
    _, version_dir, _, _, spec, _ = prepared
    got = {f.name: (f.dtype, f.shape, f.input_dtype, f.default) for f in written_spec(version_dir)}
    want = {f.name: (f.dtype, f.shape, f.input_dtype, f.default) for f in spec}
    assert got == want


def test_both_loaders_reproduce_the_in_memory_model(prepared):
    _, version_dir, model, rows, spec, output_names = prepared
    assert_predicts_like(version_dir, model, rows, output_names, spec)


def test_dense_signature_reproduces_the_in_memory_model(prepared):
    _, version_dir, model, rows, _, output_names = prepared
    fn = tf.saved_model.load(version_dir).signatures["serving_dense"]
    dense = {k: tf.constant(v) for k, v in dense_inputs(model, rows).items()}
    assert_same_outputs({k: v.numpy() for k, v in fn(**dense).items()},
                        call_keras(model, rows, output_names), "serving_dense")


def test_examples_without_a_spec_infer_the_stored_kind_and_still_match(prepared):
    # make_example without a spec picks the list kind from the Python type (float -> float_list,
    # int -> int64_list, str -> bytes_list): the way callers without a spec build records.
    _, version_dir, model, rows, _, output_names = prepared
    expected = call_keras(model, rows, output_names)
    assert_same_outputs(verify.run_tf2(version_dir, serialize(rows)), expected, "tf2, inferred kinds")


# --------------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------------

def test_versions_count_up_and_version_chooses(tmp_path):
    model = single_float_model()
    base = str(tmp_path / "models")
    assert prepare_model(model, base) == os.path.join(base, "1")
    assert prepare_model(model, base) == os.path.join(base, "2")
    assert prepare_model(model, base, version=5) == os.path.join(base, "5")
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_model(model, base, version=5)
    with pytest.raises(ValueError, match="positive"):
        prepare_model(model, base, version=0)
    assert prepare_model(model, base) == os.path.join(base, "6")
    assert sorted(os.listdir(base), key=int) == ["1", "2", "5", "6"]
    assert all(contract_problems(os.path.join(base, v)) == [] for v in ("1", "2", "5", "6"))
    assert_predicts_like(os.path.join(base, "6"), model, FLOAT_ROWS[:1], ["y"])


# --------------------------------------------------------------------------------------------
# other sources: .keras file, dense SavedModel directory
# --------------------------------------------------------------------------------------------

KERAS_FILE_ROWS = [{"x": [0.5, -1.0, 2.0, 0.0], "k": 0}, {"x": [3.0, 1.5, -0.25, 7.0], "k": 2},
                   {"x": [1.0, 1.0, 1.0, 1.0], "k": 1}]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    model = keras_file_model()
    path = str(tmp_path_factory.mktemp("keras_file") / "model.keras")
    model.save(path)
    return path, model


def test_prepare_from_a_keras_file(keras_file, tmp_path):
    path, model = keras_file
    version_dir = prepare_model(path, str(tmp_path / "out"))
    assert version_dir == str(tmp_path / "out" / "1")
    assert_predicts_like(version_dir, model, KERAS_FILE_ROWS, None)
    assert {f.name: (f.dtype, f.shape) for f in written_spec(version_dir)} == {
        "x": ("float32", (4,)), "k": ("int64", ())}


@pytest.mark.parametrize("case", ["multi_input", "int32_input"])
def test_prepare_from_a_dense_saved_model_directory(case, tmp_path):
    builder, rows, spec, _ = CASES[case]
    model = builder()
    dense_dir = str(tmp_path / "dense")
    model.export(dense_dir, verbose=False)  # serving_default takes the dense tensors
    assert contract_problems(dense_dir)  # not servable by tfx-bsl as it is
    version_dir = prepare_model(dense_dir, str(tmp_path / "out"))
    assert version_dir == str(tmp_path / "out" / "1")
    assert contract_problems(version_dir) == []
    # model.export names a single output output_0. The dense signature of a SavedModel does not
    # cast (int32_input: the int64 parsed from the record must be cast to int32 by our signature)
    assert_predicts_like(version_dir, model, rows, ["output_0"], spec)
    got = {f.name: (f.dtype, f.shape, f.input_dtype) for f in written_spec(version_dir)}
    assert got == {f.name: (f.dtype, f.shape, f.input_dtype) for f in spec}


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------

def test_cli_exports_and_prints_the_spec(keras_file, tmp_path, capsys):
    path, model = keras_file
    out = str(tmp_path / "cli")
    assert main(["--model", path, "--output", out]) == 0
    stdout = capsys.readouterr().out
    assert f"exported and verified: {os.path.join(out, '1')}" in stdout
    assert "  x: float32[4] (required)" in stdout
    assert "  k: int64[] (required)" in stdout
    assert_predicts_like(os.path.join(out, "1"), model, KERAS_FILE_ROWS[:1], None)
    # a second run takes the next version; --version picks one
    assert main(["--model", path, "--output", out, "--version", "7"]) == 0
    assert sorted(os.listdir(out)) == ["1", "7"]


def test_cli_missing_model_path_fails_clearly(tmp_path, capsys):
    missing = str(tmp_path / "nope.keras")
    out = str(tmp_path / "out")
    assert main(["--model", missing, "--output", out]) != 0
    stderr = capsys.readouterr().err
    assert "models.prepare: error:" in stderr and missing in stderr and "does not exist" in stderr
    assert not os.path.exists(out)


def test_cli_model_path_that_is_not_a_model_fails_clearly(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(empty), "--output", str(tmp_path / "out")]) != 0
    assert "neither a .keras file nor a SavedModel directory" in capsys.readouterr().err


def test_cli_existing_version_fails_clearly(keras_file, tmp_path, capsys):
    path, _ = keras_file
    out = tmp_path / "out"
    (out / "3").mkdir(parents=True)
    assert main(["--model", path, "--output", str(out), "--version", "3"]) != 0
    assert "already exists" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["3"]


def test_cli_feature_spec_default_fills_a_missing_feature(keras_file, tmp_path, capsys):
    path, model = keras_file
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"features": [{"name": "k", "dtype": "int64", "default": 2}]}))
    out = str(tmp_path / "out")
    assert main(["--model", path, "--output", out, "--feature_spec", str(spec_path)]) == 0
    assert "  k: int64[] (default=2)" in capsys.readouterr().out
    version_dir = os.path.join(out, "1")
    spec = written_spec(version_dir)
    assert {f.name: f.default for f in spec} == {"x": None, "k": 2}
    # records without k score as if k were 2; records with k use their own value
    rows = [{"x": [0.5, -1.0, 2.0, 0.0]}, {"x": [3.0, 1.5, -0.25, 7.0], "k": 0}]
    expected = call_keras(model, [dict(r, k=r.get("k", 2)) for r in rows], None)
    serialized = serialize(rows, spec)
    for e in serialized[:1]:
        assert "k" not in ex.parse_example(e).features.feature
    assert_same_outputs(verify.run_tf2(version_dir, serialized), expected, "tf2 with default")
    assert_same_outputs(verify.run_tfx_bsl(version_dir, serialized), expected, "tfx-bsl with default")
    # and the gate agrees: a record without k is valid, one without x is not
    ex.validate_example(serialized[0], spec)
    with pytest.raises(ex.RecordError, match="missing required feature 'x'"):
        ex.validate_example(serialize([{"k": 1}], spec)[0], spec)


def test_cli_feature_spec_naming_an_unknown_feature_fails_clearly(keras_file, tmp_path, capsys):
    path, _ = keras_file
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps([{"name": "colour", "dtype": "string", "shape": [1]}]))
    out = tmp_path / "out"
    assert main(["--model", path, "--output", str(out), "--feature_spec", str(spec_path)]) != 0
    stderr = capsys.readouterr().err
    assert "['colour']" in stderr and "not model inputs" in stderr
    assert not out.exists() or os.listdir(out) == []


def test_cli_feature_spec_with_a_wrong_shape_fails_clearly(keras_file, tmp_path, capsys):
    path, _ = keras_file
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"x": {"dtype": "float32", "shape": [3]}}))
    assert main(["--model", path, "--output", str(tmp_path / "out"),
                 "--feature_spec", str(spec_path)]) != 0
    assert "does not match the model input shape [4]" in capsys.readouterr().err


def test_cli_missing_feature_spec_file_fails_clearly(keras_file, tmp_path, capsys):
    path, _ = keras_file
    missing = str(tmp_path / "missing.json")
    assert main(["--model", path, "--output", str(tmp_path / "out"), "--feature_spec", missing]) != 0
    assert missing in capsys.readouterr().err


def test_cli_feature_spec_default_of_the_wrong_type_fails_clearly(keras_file, tmp_path, capsys):
    path, _ = keras_file
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps([{"name": "k", "dtype": "int64", "default": "two"}]))
    out = tmp_path / "out"
    assert main(["--model", path, "--output", str(out), "--feature_spec", str(spec_path)]) != 0
    assert "'k'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# verification failures
# --------------------------------------------------------------------------------------------

def _leftovers(base):
    return sorted(os.listdir(base)) if os.path.exists(base) else []


def test_prepare_refuses_an_export_that_does_not_reproduce_the_model(tmp_path):
    import keras

    keras.utils.set_random_seed(21)
    x = keras.Input(shape=(4,), name="x")
    # random noise: every call (in memory, tf.saved_model.load, tfx-bsl) gives other numbers
    noisy = keras.layers.Lambda(lambda t: t + tf.random.uniform(tf.shape(t)), output_shape=(4,),
                                name="noisy")(x)
    base = str(tmp_path / "noisy")
    with pytest.raises(VerificationError) as info:
        prepare_model(keras.Model(x, noisy), base)
    message = str(info.value)
    assert "tf.saved_model.load: output 'noisy' differs from the in-memory model" in message
    assert "tfx-bsl TF1 session loader: output 'noisy' differs from the in-memory model" in message
    assert len(info.value.problems) == 2
    assert _leftovers(base) == []  # no 1/, no .staging-*


def test_prepare_reports_the_loader_that_disagrees_and_leaves_nothing(tmp_path, monkeypatch):
    # A monkeypatch of our own function (not a mock of TF or tfx-bsl): the tf.saved_model.load
    # path is made to return perturbed numbers, so only that loader must be reported.
    real_run_tf2 = verify.run_tf2

    def perturbed_run_tf2(export_dir, serialized, signature="serving_default"):
        return {k: v * (1 + 1e-3) + 1e-3 for k, v in real_run_tf2(export_dir, serialized, signature).items()}

    monkeypatch.setattr(verify, "run_tf2", perturbed_run_tf2)
    model = single_float_model()
    base = str(tmp_path / "models")
    with pytest.raises(VerificationError) as info:
        prepare_model(model, base)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("tf.saved_model.load: output 'y' differs")
    assert "tfx-bsl" not in str(info.value)
    assert _leftovers(base) == []
    # the failed attempt used up no version number
    monkeypatch.undo()
    assert prepare_model(model, base) == os.path.join(base, "1")
    assert _leftovers(base) == ["1"]


def test_verify_export_compares_both_loaders_with_the_reference(tmp_path):
    model = single_float_model()
    source = export.from_keras(model)
    spec = export.derive_spec(source.inputs)
    export_dir = str(tmp_path / "export")
    export.write_export(source, spec, export_dir)

    ok = verify.verify_export(export_dir, spec, source.call, count=5)
    assert ok.ok and ok.problems == [] and ok.checked_examples == 5

    def shifted(dense):
        return {k: v + 0.5 for k, v in source.call(dense).items()}

    bad = verify.verify_export(export_dir, spec, shifted, count=5)
    assert not bad.ok
    assert [p.split(":")[0] for p in bad.problems] == ["tf.saved_model.load", "tfx-bsl TF1 session loader"]
    assert all("output 'y' differs" in p for p in bad.problems)

    renamed = verify.verify_export(export_dir, spec, lambda d: {"other": source.call(d)["y"]})
    assert len(renamed.problems) == 2 and all("differ from the model's ['other']" in p
                                              for p in renamed.problems)

    def broken(dense):
        raise RuntimeError("no")

    failing = verify.verify_export(export_dir, spec, broken)
    assert failing.checked_examples == 0
    assert failing.problems == [
        "the in-memory model fails on golden examples generated from the feature spec: RuntimeError: no"]


# --------------------------------------------------------------------------------------------
# a model that already takes serialized tf.Example
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tf1_builder", "tf2_module"])
def test_cli_refuses_a_model_that_already_takes_examples_in_one_line_with_exit_2(kind, tmp_path, capsys):
    from tests.support.foreign_models import tf1_linear_export, tf2_module_export

    model_dir, input_name = {"tf1_builder": (lambda: tf1_linear_export(str(tmp_path / "tf1")), "examples"),
                             "tf2_module": (lambda: tf2_module_export(str(tmp_path / "tf2")), "inputs")}[kind]
    model_dir = model_dir()
    out = str(tmp_path / "out")
    assert main(["--model", model_dir, "--output", out]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("models.prepare: error: ")
    assert "already takes serialized tf.Example" in captured.err and f"input {input_name!r}" in captured.err
    assert f"--model {model_dir}" in captured.err and "as it is" in captured.err
    assert "Detected at node" not in captured.err and "Traceback" not in captured.err
    assert not os.path.exists(out)


def test_a_model_failing_on_its_golden_examples_is_named_by_tensorflows_reason_not_its_preamble(tmp_path):
    """The same model given as a loaded SourceModel (no refusal up front): the in-memory model
    fails on the golden examples, and the problem says why in one line."""
    from tests.support.foreign_models import tf1_linear_export

    source = export.load_source_model(tf1_linear_export(str(tmp_path / "tf1")))
    with pytest.raises(VerificationError) as info:
        prepare_model(source, str(tmp_path / "out"))
    (problem,) = info.value.problems
    assert problem.startswith("the in-memory model fails on golden examples generated from the feature spec: "
                              "InvalidArgumentError: ")
    assert "Could not parse example input" in problem
    assert "Detected at node" not in problem and "\n" not in problem
