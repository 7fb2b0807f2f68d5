"""Signatures that take tensors, scored as they are by the plain command on the fast engine: a
Keras model.export() with two dense inputs from TFRecord, JSON Lines and CSV; typed inputs (float,
int64, bool, string, an int32 input of any length) with per-record dead letters naming the input;
--feature_spec defaults and renames; PredictionLogs of the input tensors; a TF1 placeholder export;
a raw-text input. Rows equal the models called directly; the tfx-bsl engine is refused at launch
with its reason and the ways out."""

import csv
import glob
import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from models.serving.dense import TensorInputs, scatter_outputs, tensor_input_spec
from models.serving.examples import make_example
from models.serving.feature_spec import Feature, FeatureSpecError
from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.support.tensor_models import (keras_two_inputs_export, load_signature, raw_text_export,
                                         tf1_placeholder_export, typed_direct, typed_module_export, version_dir)

RNG = np.random.default_rng(7)
MEASUREMENTS = RNG.normal(size=(12, 4)).astype(np.float32)
CONTEXT = RNG.normal(size=(12, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory):
    return keras_two_inputs_export(version_dir(str(tmp_path_factory.mktemp("keras")), "km"))


@pytest.fixture(scope="module")
def typed_dir(tmp_path_factory):
    return typed_module_export(version_dir(str(tmp_path_factory.mktemp("typed")), "typed"))


def score(args, out):
    assert batch_infer.main(args + ["--output", out]) == 0
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    return rows, read_jsonl(out + ".errors-*.jsonl")


def keras_expected(keras_dir):
    out = load_signature(keras_dir)(measurements=tf.constant(MEASUREMENTS), context=tf.constant(CONTEXT))
    (name,) = out
    return name, out[name].numpy()


def write_keras_inputs(tmp_path, write_tfrecords, kind):
    rows = [{"id": f"k{i}", "measurements": m.tolist(), "context": c.tolist()}
            for i, (m, c) in enumerate(zip(MEASUREMENTS, CONTEXT))]
    if kind == "tfrecord":
        return write_tfrecords("in.tfrecord", [make_example(r).SerializeToString() for r in rows])
    path = str(tmp_path / f"in.{kind}")
    with open(path, "w", newline="") as f:
        if kind == "jsonl":
            f.writelines(json.dumps(r) + "\n" for r in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=["id", "measurements", "context"])
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    return path


@pytest.mark.parametrize("kind", ["tfrecord", "jsonl", "csv"])
def test_a_keras_export_with_two_dense_inputs_gives_the_models_numbers_from_every_file_source(
        keras_dir, tmp_path, write_tfrecords, kind):
    path = write_keras_inputs(tmp_path, write_tfrecords, kind)
    rows, errors = score(["--input", path, "--model", f"km={keras_dir}", "--key_feature", "id"],
                         str(tmp_path / "out" / "p"))
    name, expected = keras_expected(keras_dir)
    assert errors == [] and len(rows) == len(MEASUREMENTS)
    got = np.asarray([rows[f"k{i}"]["km"][name] for i in range(len(MEASUREMENTS))], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_a_value_that_does_not_fit_its_input_is_one_dead_letter_naming_the_input(keras_dir, tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [{"id": f"good{i}", "measurements": m.tolist(), "context": c.tolist()}
             for i, (m, c) in enumerate(zip(MEASUREMENTS, CONTEXT))] + [
             {"id": "short", "measurements": [1.0, 2.0, 3.0], "context": [0.0, 0.0]},
             {"id": "text", "measurements": ["a", "b", "c", "d"], "context": [0.0, 0.0]},
             {"id": "absent", "measurements": [1.0, 2.0, 3.0, 4.0]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows, errors = score(["--input", str(path), "--model", f"km={keras_dir}", "--key_feature", "id"],
                         str(tmp_path / "out" / "p"))
    assert len(rows) == len(MEASUREMENTS) and len(rows) + len(errors) == len(lines)
    by_key = {e["key"]: e for e in errors}
    assert set(by_key) == {"short", "text", "absent"}
    assert "measurements" in by_key["short"]["error"] and by_key["short"]["stage"] in ("convert", "validate")
    assert "measurements" in by_key["text"]["error"] and by_key["text"]["stage"] == "convert"
    assert "context" in by_key["absent"]["error"]


def test_the_tfx_bsl_engine_is_refused_at_launch_with_its_reason_and_both_ways_out(keras_dir, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "measurements": [0.0] * 4, "context": [0.0] * 2}) + "\n")
    code = batch_infer.main(["--input", str(path), "--model", f"km={keras_dir}", "--engine", "tfx-bsl",
                             "--output", str(tmp_path / "out" / "p")])
    err = capsys.readouterr().err
    assert code == 2 and not glob.glob(str(tmp_path / "out" / "p-*"))
    assert "takes tensors (context float32[None, 2], measurements float32[None, 4])" in err, err
    assert "--engine fast" in err and "models.prepare" in err and err.count("tensorflow/tfx-bsl#29") == 1


TYPED = [  # x, n, flag, word, ids: ids of three lengths, so the batch is called once per length
    ([1.0, 2.0, 3.0], 4, True, "a", [1, 2]),
    ([-1.0, 0.5, 0.0], 0, False, "bé", [5]),
    ([0.0, 0.0, 1.0], -3, True, "", [7, 8, 9]),
    ([2.0, 2.0, 2.0], 1, False, "zz", [3, 4]),
    ([0.5, 0.5, 0.5], 9, True, "q", [10]),
]


def typed_records(rename_word=False):
    word = "token" if rename_word else "word"
    return [make_example({"id": f"t{i}", "x": x, "n": n, "flag": int(flag), word: w, "ids": ids}).SerializeToString()
            for i, (x, n, flag, w, ids) in enumerate(TYPED)]


def assert_typed_rows(rows, typed_dir, cases=TYPED):
    for i, case in enumerate(cases):
        want, got = typed_direct(typed_dir, *case), rows[f"t{i}"]["typed"]
        np.testing.assert_allclose(got["score"], want["score"], rtol=1e-6)
        assert got["ids_sum"] == int(want["ids_sum"]) and got["ids_len"] == int(want["ids_len"])
        assert got["echo"] == want["echo"].decode() and got["positive"] is bool(want["positive"])


def test_typed_inputs_and_inputs_of_any_length_give_the_models_values_exactly(typed_dir, tmp_path, write_tfrecords):
    path = write_tfrecords("typed.tfrecord", typed_records())
    rows, errors = score(["--input", path, "--model", f"typed={typed_dir}", "--key_feature", "id"],
                         str(tmp_path / "out" / "p"))
    assert errors == [] and len(rows) == len(TYPED)
    assert_typed_rows(rows, typed_dir)


def test_a_feature_spec_gives_a_default_and_feeds_an_input_from_a_feature_of_another_name(
        typed_dir, tmp_path, write_tfrecords):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"features": [{"name": "n", "dtype": "int64", "shape": [], "default": 0},
                                             {"name": "token", "input": "word", "dtype": "string", "shape": []}]}))
    records = typed_records(rename_word=True)
    without_n = make_example({"id": "t5", "x": [1.0, 1.0, 1.0], "flag": 0, "token": "d", "ids": [2]})
    path = write_tfrecords("typed.tfrecord", records + [without_n.SerializeToString()])
    rows, errors = score(["--input", path, "--model", f"typed={typed_dir}", "--key_feature", "id",
                          "--feature_spec", f"typed={spec}"], str(tmp_path / "out" / "p"))
    assert errors == [] and len(rows) == len(TYPED) + 1
    assert_typed_rows(rows, typed_dir, TYPED + [([1.0, 1.0, 1.0], 0, False, "d", [2])])


def test_a_required_input_missing_from_a_record_is_a_validate_dead_letter(typed_dir, tmp_path, write_tfrecords):
    no_n = make_example({"id": "bad", "x": [1.0, 1.0, 1.0], "flag": 0, "word": "d", "ids": [2]})
    path = write_tfrecords("typed.tfrecord", typed_records() + [no_n.SerializeToString()])
    rows, errors = score(["--input", path, "--model", f"typed={typed_dir}", "--key_feature", "id"],
                         str(tmp_path / "out" / "p"))
    assert len(rows) == len(TYPED) and [(e["key"], e["stage"]) for e in errors] == [("bad", "validate")]
    assert "'n'" in errors[0]["error"]
    assert_typed_rows(rows, typed_dir)


def test_prediction_logs_hold_the_input_tensors_and_the_outputs(typed_dir, tmp_path, write_tfrecords):
    path = write_tfrecords("typed.tfrecord", typed_records())
    out = str(tmp_path / "out" / "p")
    assert batch_infer.main(["--input", path, "--model", f"typed={typed_dir}", "--key_feature", "id",
                             "--output_format", "tfrecord", "--output", out]) == 0
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for shard in sorted(glob.glob(out + "-*.tfrecord")) for r in tf.data.TFRecordDataset(shard)]
    assert len(logs) == len(TYPED)
    by_word = {tf.make_ndarray(log.predict_log.request.inputs["word"])[0].decode(): log for log in logs}
    for case in TYPED:
        x, n, flag, word, ids = case
        request, response = by_word[word].predict_log.request, by_word[word].predict_log.response
        assert sorted(request.inputs) == ["flag", "ids", "n", "word", "x"]
        np.testing.assert_array_equal(tf.make_ndarray(request.inputs["x"]), [x])
        np.testing.assert_array_equal(tf.make_ndarray(request.inputs["ids"]), [ids])
        assert tf.make_ndarray(request.inputs["flag"]).tolist() == [flag]
        assert tf.make_ndarray(request.inputs["n"]).tolist() == [n]
        want = typed_direct(typed_dir, *case)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), [want["score"]], rtol=1e-6)
        assert tf.make_ndarray(response.outputs["echo"]).tolist() == [want["echo"]]


def test_a_tf1_placeholder_export_is_scored_from_json_lines(tmp_path):
    model_dir = tf1_placeholder_export(version_dir(str(tmp_path), "tf1"))
    xs = [[1.0, 2.0], [0.5, -4.0], [3.0, 3.0]]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "x": x}) + "\n" for i, x in enumerate(xs)))
    rows, errors = score(["--input", str(path), "--model", f"tf1={model_dir}", "--key_feature", "id"],
                         str(tmp_path / "out" / "p"))
    assert errors == []
    got = [rows[f"r{i}"]["tf1"]["y"] for i in range(len(xs))]
    np.testing.assert_allclose(got, [3 * a - 2 * b + 1 for a, b in xs], rtol=1e-6)


def test_a_lone_string_input_without_a_parse_op_takes_the_text_itself(tmp_path):
    model_dir = raw_text_export(version_dir(str(tmp_path), "text"))
    texts = ["two words", "ünï cødé here now", ""]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    rows, errors = score(["--input", str(path), "--model", f"text={model_dir}", "--key_feature", "id"],
                         str(tmp_path / "out" / "p"))
    assert errors == []
    direct = load_signature(model_dir)(text=tf.constant(texts))
    for i, text in enumerate(texts):
        assert rows[f"r{i}"]["text"] == {"words": len(text.split()), "chars": len(text),
                                         "upper": direct["upper"].numpy()[i].decode()}


# pure: the spec from a signature's inputs, and the step that turns records into them

def test_the_spec_from_inputs_drops_the_batch_axis_and_keeps_each_inputs_dtype():
    spec = tensor_input_spec({"a": ("float64", (None, 2, 3)), "b": ("bool", (None,)), "c": ("int32", (None, None))})
    assert [(f.name, f.dtype, f.shape, f.model_dtype, f.varlen) for f in spec] == [
        ("a", "float32", (2, 3), "float64", False), ("b", "int64", (), "bool", False),
        ("c", "int64", (), "int32", True)]


@pytest.mark.parametrize("inputs, message", [
    ({"img": ("float32", (None, None, None, 3))}, "give its per-example shape with --feature_spec"),
    ({"s": ("float32", ())}, "no batch axis"),
    ({"u": ("float32", None)}, "unknown rank"),
    ({"c": ("complex64", (None,))}, "cannot be fed"),
])
def test_inputs_no_record_can_fill_are_refused_naming_the_input(inputs, message):
    with pytest.raises(FeatureSpecError, match=message):
        tensor_input_spec(inputs)


def test_an_override_fixes_unknown_sizes_and_must_fit_the_input():
    fixed = tensor_input_spec({"img": ("float32", (None, None, None, 3))}, [Feature("img", "float32", (2, 2, 3))])
    assert fixed[0].shape == (2, 2, 3) and fixed[0].model_dtype == "float32"
    with pytest.raises(FeatureSpecError, match="does not fit input 'img'"):
        tensor_input_spec({"img": ("float32", (None, None, None, 3))}, [Feature("img", "float32", (2, 2, 4))])
    with pytest.raises(FeatureSpecError, match="not an input of the signature"):
        tensor_input_spec({"a": ("float32", (None,))}, [Feature("b", "float32", ())])
    with pytest.raises(FeatureSpecError, match="cannot feed input 'a'"):
        tensor_input_spec({"a": ("float32", (None,))}, [Feature("a", "string", ())])


def test_records_of_different_lengths_are_grouped_and_their_outputs_put_back_in_order():
    spec = tensor_input_spec({"v": ("int32", (None, None)), "w": ("float32", (None,))})
    records = [make_example({"v": v, "w": float(i)}, spec).SerializeToString()
               for i, v in enumerate([[1, 2], [3], [4, 5], [6]])]
    tensors = TensorInputs(spec, ["v", "w"])
    groups = tensors.groups(tensors.parse(tf.constant(records)))
    assert sorted(p.tolist() for p, _ in groups) == [[0, 2], [1, 3]]
    parts = [(p, {"total": tf.reduce_sum(g["v"], axis=1).numpy(), "row": g["v"].numpy()}) for p, g in groups]
    out = scatter_outputs(4, parts)
    assert out["total"].tolist() == [3, 3, 9, 6]
    assert [r.tolist() for r in out["row"]] == [[1, 2], [3], [4, 5], [6]]  # trailing shapes differ: per record


def test_a_sparse_input_is_refused_before_launch_naming_it(tmp_path, capsys):
    """A TF1 signature whose input is a SparseTensor (its TensorInfo a coo_sparse encoding)."""
    model_dir = version_dir(str(tmp_path), "sparse")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        ids = tf.compat.v1.sparse_placeholder(tf.int64, [None, None], name="ids")
        total = tf.sparse.reduce_sum(ids, axis=1)
        builder = tf.compat.v1.saved_model.Builder(model_dir)
        builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map={
            "serving_default": tf.compat.v1.saved_model.predict_signature_def({"ids": ids}, {"total": total})})
        builder.save()
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "ids": [1, 2]}) + "\n")
    assert batch_infer.main(["--input", str(path), "--model", f"s={model_dir}", "--output",
                             str(tmp_path / "out" / "p")]) == 2
    err = capsys.readouterr().err
    assert "input 'ids' is a SparseTensor" in err and "takes serialized tf.Example" in err, err


def test_an_image_input_is_fed_from_raw_bytes_with_a_feature_spec(tmp_path, write_tfrecords):
    import keras

    keras.utils.set_random_seed(4)
    image = keras.Input((4, 4, 3), name="image", dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(image))
    model_dir = version_dir(str(tmp_path), "cnn")
    keras.Model(image, keras.layers.Dense(2)(pooled)).export(model_dir, verbose=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"features": [{"name": "image", "dtype": "uint8", "shape": [4, 4, 3],
                                              "encoding": "raw"}]}))
    pixels = RNG.integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    records = [make_example({"id": f"i{i}", "image": p.tobytes()}).SerializeToString() for i, p in enumerate(pixels)]
    records.append(make_example({"id": "short", "image": b"\x00" * 47}).SerializeToString())
    path = write_tfrecords("images.tfrecord", records)
    rows, errors = score(["--input", path, "--model", f"cnn={model_dir}", "--key_feature", "id",
                          "--feature_spec", f"cnn={spec}"], str(tmp_path / "out" / "p"))
    direct = load_signature(model_dir)(image=tf.constant(pixels))
    (name,) = direct
    got = np.asarray([rows[f"i{i}"]["cnn"][name] for i in range(len(pixels))], dtype=np.float32)
    np.testing.assert_allclose(got, direct[name].numpy(), rtol=1e-5)
    assert [(e["key"], e["stage"]) for e in errors] == [("short", "validate")] and "47 bytes" in errors[0]["error"]


def test_a_signature_of_tensors_downstream_in_a_graph_gets_its_input_from_the_upstream_model(
        keras_dir, tmp_path, write_tfrecords):
    import keras
    import yaml

    keras.utils.set_random_seed(5)
    probs = keras.Input((3,), name="probs")
    head_dir = version_dir(str(tmp_path), "head")
    keras.Model(probs, keras.layers.Dense(1)(probs)).export(head_dir, verbose=False)
    graph = tmp_path / "graph.yaml"
    graph.write_text(yaml.safe_dump({"models": [{"name": "km", "path": keras_dir},
                                                {"name": "head", "path": head_dir, "inputs": {"probs": "km.output_0"}}]}))
    path = write_keras_inputs(tmp_path, write_tfrecords, "tfrecord")
    rows, errors = score(["--input", path, "--graph", str(graph), "--key_feature", "id",
                          "--allow_outside_paths"], str(tmp_path / "out" / "p"))
    name, first = keras_expected(keras_dir)
    head = load_signature(head_dir)(probs=tf.constant(first))
    (head_name,) = head
    assert errors == [] and len(rows) == len(MEASUREMENTS)
    got = np.asarray([rows[f"k{i}"]["head"][head_name] for i in range(len(MEASUREMENTS))], dtype=np.float32)
    np.testing.assert_allclose(got, head[head_name].numpy(), rtol=1e-5)
