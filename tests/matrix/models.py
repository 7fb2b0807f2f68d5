"""Tiny real SavedModels for the conformance matrix, built by the tests (tf.Module +
tf.saved_model.save, TF Serving's base/1 layout, assets.extra/feature_spec.json = records.SPEC):

- kinds: reads every feature kind of records.SPEC, one checkable output per kind:
    vec_sum = f_scalar + sum(f_vec); vec = 2 * f_vec [K]; probs = softmax(f_vec) [K];
    int_count, int_sum (of the VarLen ints); text_chars (UTF-8 characters); text_echo (the text);
    blob_len (bytes); opt_value (the default when left out); image_sum (sum of the raw uint8 pixels).
- gate: tf.debugging.assert_non_negative(f_scalar), so it REJECTS records with f_scalar < 0
  (infer dead letters naming it); margin = f_scalar, scaled = f_vec * f_scalar [K].
- head: reads h float32[K] (bridged from kinds.vec in a chain) and opt from the record:
    score = sum(h) + opt; weighted = h * opt [K].
- tensors: a signature of tensors, not tf.Example (as a Keras model.export() has): f_scalar
  float32[None], f_vec float32[None, K], ints int64[None, None] (records of different lengths are
  scored in groups), text and blob string[None], opt int64[None] (its default from TENSORS_SPEC,
  given with --feature_spec); kinds' outputs of those (vec_sum, vec, int_count, int_sum,
  text_chars, text_echo, blob_len, opt_value).
- arrays: a signature of fixed-shape tensors only, f_scalar float32[None], f_vec float32[None, K]
  and text string[None] (what Parquet, JSON Lines, CSV and BigQuery rows reach in bulk, as arrays,
  without a tf.Example each), which REJECTS records with f_scalar < 0 as gate does: total =
  f_scalar + sum(f_vec), vec = 2 * f_vec [K], text_chars.
- mixed: one output of each dtype a row holds, from f_scalar, f_vec and text (total = f_scalar +
  sum(f_vec)): label string (text + ":pos" or ":neg"), count int64, positive bool, score float32,
  top int32 (argmax of f_vec), wide float64 (total / 3), vec float32 [K] (f_vec / 2 - 1),
  signs bool [K] (f_vec >= 0).

`direct_outputs` calls a model's serving signature directly (tf.saved_model.load) on serialized
examples, one record at a time where a model may reject some: the reference the checkers use.
"""

import json
import os
from typing import Dict, List, Optional

import numpy as np

from tests.matrix.records import IMAGE_SHAPE, K, OPT_DEFAULT, SPEC

def parse_spec():
    """records.SPEC as tf.io parse features (the raw image as one string, decoded by the model)."""
    import tensorflow as tf

    return {"f_scalar": tf.io.FixedLenFeature([], tf.float32),
            "f_vec": tf.io.FixedLenFeature([K], tf.float32),
            "ints": tf.io.VarLenFeature(tf.int64),
            "text": tf.io.FixedLenFeature([], tf.string),
            "blob": tf.io.FixedLenFeature([], tf.string),
            "opt": tf.io.FixedLenFeature([], tf.int64, default_value=OPT_DEFAULT),
            "image": tf.io.FixedLenFeature([], tf.string)}


def kinds_outputs(f):
    """The kinds model's outputs from parsed features (a dict of tensors)."""
    import tensorflow as tf

    ints = tf.sparse.to_dense(f["ints"])
    pixels = tf.reshape(tf.io.decode_raw(f["image"], tf.uint8), [-1, int(np.prod(IMAGE_SHAPE))])
    return {"vec_sum": f["f_scalar"] + tf.reduce_sum(f["f_vec"], axis=1),
            "vec": 2.0 * f["f_vec"], "probs": tf.nn.softmax(f["f_vec"], axis=1),
            "int_count": tf.reduce_sum(tf.sparse.to_dense(tf.sparse.map_values(tf.ones_like, f["ints"])), axis=1),
            "int_sum": tf.reduce_sum(ints, axis=1),
            "text_chars": tf.cast(tf.strings.length(f["text"], unit="UTF8_CHAR"), tf.int64),
            "text_echo": f["text"],
            "blob_len": tf.cast(tf.strings.length(f["blob"]), tf.int64),
            "opt_value": f["opt"],
            "image_sum": tf.reduce_sum(tf.cast(pixels, tf.int64), axis=1)}


def gate_outputs(f):
    import tensorflow as tf

    with tf.control_dependencies([tf.debugging.assert_non_negative(f["f_scalar"], message="gate: negative")]):
        margin = tf.identity(f["f_scalar"])
    return {"margin": margin, "scaled": f["f_vec"] * margin[:, None]}


def mixed_outputs(f):
    import tensorflow as tf

    x = f["f_vec"]
    total = f["f_scalar"] + tf.reduce_sum(x, axis=1)
    return {"label": tf.strings.join([f["text"], tf.where(total > 0, "pos", "neg")], separator=":"),
            "count": tf.reduce_sum(tf.cast(x > 0, tf.int64), axis=1), "positive": total > 0,
            "score": 0.25 * total, "top": tf.argmax(x, axis=1, output_type=tf.int32),
            "wide": tf.cast(total, tf.float64) / 3.0, "vec": 0.5 * x - 1.0,
            "signs": x >= 0}


def head_outputs(f):
    import tensorflow as tf

    opt = tf.cast(f["opt"], tf.float32)
    return {"score": tf.reduce_sum(f["h"], axis=1) + opt, "weighted": f["h"] * opt[:, None]}


def head_parse():
    import tensorflow as tf

    return {"h": tf.io.FixedLenFeature([K], tf.float32),
            "opt": tf.io.FixedLenFeature([], tf.int64, default_value=OPT_DEFAULT)}


HEAD_SPEC = {"features": [{"name": "h", "dtype": "float32", "shape": [K]},
                          {"name": "opt", "dtype": "int64", "shape": [], "default": OPT_DEFAULT}]}


def export_module(version_dir: str, parse, compute, spec: dict) -> str:
    """A tf.Module whose serving_default takes serialized tf.Examples ("examples"), saved with its
    feature spec in assets.extra."""
    import tensorflow as tf

    class Served(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            return compute(tf.io.parse_example(examples, parse()))

    module = Served()
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(version_dir, "assets.extra", "feature_spec.json"), "w") as f:
        json.dump(spec, f)
    return version_dir


TENSORS_SPEC = {"features": [{"name": "opt", "dtype": "int64", "shape": [], "default": OPT_DEFAULT}]}


def tensor_outputs(f_scalar, f_vec, ints, text, blob, opt):
    import tensorflow as tf

    n = tf.shape(f_scalar)[:1]
    return {"vec_sum": f_scalar + tf.reduce_sum(f_vec, axis=1), "vec": 2.0 * f_vec,
            "int_count": tf.fill(n, tf.cast(tf.shape(ints)[1], tf.int64)), "int_sum": tf.reduce_sum(ints, axis=1),
            "text_chars": tf.cast(tf.strings.length(text, unit="UTF8_CHAR"), tf.int64), "text_echo": text,
            "blob_len": tf.cast(tf.strings.length(blob), tf.int64), "opt_value": opt}


def export_tensors_module(version_dir: str) -> str:
    """A tf.Module whose serving_default takes the records' features as tensors."""
    import tensorflow as tf

    class Served(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.float32, name="f_scalar"), tf.TensorSpec([None, K], tf.float32, name="f_vec"),
            tf.TensorSpec([None, None], tf.int64, name="ints"), tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([None], tf.string, name="blob"), tf.TensorSpec([None], tf.int64, name="opt")])
        def serve(self, f_scalar, f_vec, ints, text, blob, opt):
            return tensor_outputs(f_scalar, f_vec, ints, text, blob, opt)

    module = Served()
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})
    return version_dir


def export_arrays_module(version_dir: str) -> str:
    """A tf.Module whose serving_default takes three fixed-shape tensors and rejects f_scalar < 0."""
    import tensorflow as tf

    class Served(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="f_scalar"),
                                      tf.TensorSpec([None, K], tf.float32, name="f_vec"),
                                      tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, f_scalar, f_vec, text):
            with tf.control_dependencies([tf.debugging.assert_non_negative(f_scalar, message="arrays: negative")]):
                f_scalar = tf.identity(f_scalar)
            return {"total": f_scalar + tf.reduce_sum(f_vec, axis=1), "vec": 2.0 * f_vec,
                    "text_chars": tf.cast(tf.strings.length(text, unit="UTF8_CHAR"), tf.int64)}

    module = Served()
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})
    return version_dir


def direct_array_outputs(signature, records: List[dict]) -> List[Optional[Dict[str, np.ndarray]]]:
    """The arrays model called directly on each record's values: its outputs, or None where it
    rejects the record."""
    import tensorflow as tf

    results = []
    for r in records:
        try:
            out = signature(f_scalar=tf.constant([r["f_scalar"]], tf.float32),
                            f_vec=tf.constant([r["f_vec"]], tf.float32), text=tf.constant([r["text"].encode("utf-8")]))
        except tf.errors.InvalidArgumentError:
            results.append(None)
            continue
        results.append({name: value.numpy()[0] for name, value in out.items()})
    return results


def build_models(base: str) -> Dict[str, str]:
    """{name: base directory} of kinds, gate, head, mixed, tensors and arrays under base (each with
    version 1)."""
    built = {"tensors": os.path.dirname(export_tensors_module(os.path.join(base, "tensors", "1"))),
             "arrays": os.path.dirname(export_arrays_module(os.path.join(base, "arrays", "1")))}
    for name, parse, compute, spec in (("kinds", parse_spec, kinds_outputs, SPEC),
                                       ("gate", parse_spec, gate_outputs, SPEC),
                                       ("head", head_parse, head_outputs, HEAD_SPEC),
                                       ("mixed", parse_spec, mixed_outputs, SPEC)):
        export_module(os.path.join(base, name, "1"), parse, compute, spec)
        built[name] = os.path.join(base, name)
    return built


def load_signature(base_dir: str):
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(base_dir, "1")).signatures["serving_default"]


def direct_tensor_outputs(signature, records: List[dict]) -> List[Dict[str, np.ndarray]]:
    """The tensors model called directly on each record's values, one record at a time."""
    import tensorflow as tf

    results = []
    for r in records:
        out = signature(f_scalar=tf.constant([r["f_scalar"]], tf.float32), f_vec=tf.constant([r["f_vec"]], tf.float32),
                        ints=tf.constant([r["ints"]], tf.int64, shape=[1, len(r["ints"])]),
                        text=tf.constant([r["text"].encode("utf-8")]), blob=tf.constant([r["blob"]]),
                        opt=tf.constant([r.get("opt", OPT_DEFAULT)], tf.int64))
        results.append({name: value.numpy()[0] for name, value in out.items()})
    return results


def direct_outputs(signature, serialized: List[bytes]) -> List[Optional[Dict[str, np.ndarray]]]:
    """The signature called directly on each record: its outputs, or None where it rejects it."""
    import tensorflow as tf

    results = []
    for record in serialized:
        try:
            out = signature(examples=tf.constant([record]))
        except tf.errors.InvalidArgumentError:  # the model's own assertion: a rejected record
            results.append(None)
            continue
        results.append({name: value.numpy()[0] for name, value in out.items()})
    return results


LABELS = ("low", "mid", "high")
KEPT = ("label", "score", "top_labels", "top_scores", "vec_sum", "int_count", "int_sum", "text_chars",
        "blob_len", "opt_value", "image_sum")
GRAPHS = {  # graph files written beside the models (paths relative to the file, as a user writes them)
    "chain": {"models": [{"name": "kinds", "path": "kinds"},
                         {"name": "head", "path": "head", "inputs": {"h": "kinds.vec"}}]},
    "postprocess": {"models": [{"name": "kinds", "path": "kinds", "postprocess": [
        {"classify": {"output": "probs", "labels": list(LABELS), "top_k": 2}},
        {"regress": {"output": "vec_sum", "round": 2}}], "keep": list(KEPT)}]},
}
SHAPE_MODELS = {"single": ("kinds",), "parallel": ("kinds", "gate"), "chain": ("kinds", "head"),
                "postprocess": ("kinds",), "dense": ("tensors",), "mixed": ("mixed",), "arrays": ("arrays",)}


def write_graphs(base: str) -> Dict[str, str]:
    """{shape: graph file path} for the shapes given as graph files, and "dense": the tensors
    model's --feature_spec file."""
    import yaml

    paths = {"dense": os.path.join(base, "tensors_spec.json")}
    with open(paths["dense"], "w") as f:
        json.dump(TENSORS_SPEC, f)
    for shape, config in GRAPHS.items():
        paths[shape] = os.path.join(base, f"{shape}.yaml")
        with open(paths[shape], "w") as f:
            yaml.safe_dump(config, f)
    return paths


def postprocessed(out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The post-processing steps of GRAPHS["postprocess"] redone in numpy on one record's outputs."""
    probs = out["probs"]
    order = np.argsort(-probs, kind="stable")[:2]
    full = dict(out, label=np.asarray(LABELS[int(np.argmax(probs))].encode()), score=probs.max(),
                top_labels=np.asarray([LABELS[i].encode() for i in order]), top_scores=probs[order],
                vec_sum=np.round(out["vec_sum"], 2))
    return {name: full[name] for name in KEPT}


def head_example(vec: np.ndarray, record: dict) -> bytes:
    """What the chain feeds head for one record: kinds.vec as h, opt from the record."""
    from tests.matrix.records import to_example

    fed = {"h": [float(v) for v in vec]}
    if "opt" in record:
        fed["opt"] = record["opt"]
    return to_example(fed)


def expected_outputs(shape: str, records: List[dict], signatures) -> List[Dict[str, Optional[dict]]]:
    """Per record, {model: its outputs, or None where it rejects the record}, from direct calls."""
    from tests.matrix.records import to_example

    if shape == "dense":
        return [{"tensors": out} for out in direct_tensor_outputs(signatures["tensors"], records)]
    if shape == "arrays":
        return [{"arrays": out} for out in direct_array_outputs(signatures["arrays"], records)]
    if shape == "mixed":
        return [{"mixed": out} for out in direct_outputs(signatures["mixed"], [to_example(r) for r in records])]
    kinds = direct_outputs(signatures["kinds"], [to_example(r) for r in records])
    result = [{"kinds": out} for out in kinds]
    if shape == "parallel":
        for row, out in zip(result, direct_outputs(signatures["gate"], [to_example(r) for r in records])):
            row["gate"] = out
    elif shape == "chain":
        fed = [head_example(out["vec"], r) for out, r in zip(kinds, records)]
        for row, out in zip(result, direct_outputs(signatures["head"], fed)):
            row["head"] = out
    elif shape == "postprocess":
        for row in result:
            row["kinds"] = postprocessed(row["kinds"])
    return result
