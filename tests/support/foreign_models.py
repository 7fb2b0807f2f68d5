"""SavedModels exported the way users' own tools export them, not through models.prepare.

tf1_linear_export: a TF1 SavedModelBuilder export (graph mode, variables, a tf.Example parse op)
with predict, classify and regress signatures, the shape Estimator and TF1 exports have:

    score  = x . w + b                 (x: float32[2] feature "x", w = [0.5, -1.5], b = 0.25)
    predict:  inputs "examples" -> {"score": [n], "double": [n, 1] = 2 * score}
    classify: inputs "inputs"   -> {"classes": [n, 2] ("neg", "pos"), "scores": [n, 2] = softmax([-score, score])}
    classify_scores: the same scores, no classes
    regress:  inputs "inputs"   -> {"outputs": [n, 1] = score}

expected_linear(values) gives the same numbers from plain numpy, for checking rows and logs.
"""

import os
from typing import Dict, Sequence, Tuple

import numpy as np

WEIGHTS = np.float32([0.5, -1.5])
BIAS = np.float32(0.25)
LABELS = (b"neg", b"pos")


def _save_tf1(graph, export_dir: str, signatures, initialize: bool = False) -> str:
    """The graph's session saved by SavedModelBuilder with these signatures, as TF1 exports are."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with graph.as_default(), v1.Session(graph=graph) as session:
        if initialize:
            session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map=signatures)
        builder.save()
    return export_dir


def _predict_signature(serialized, outputs):
    import tensorflow as tf

    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={"examples": info(serialized)}, outputs={name: info(t) for name, t in outputs.items()},
        method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)


def tf1_linear_export(base_dir: str, version: str = "1") -> str:
    """Writes the export to base_dir/version; returns the version directory."""
    import tensorflow as tf

    v1 = tf.compat.v1
    export_dir = os.path.join(base_dir, version)
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = v1.parse_example(serialized, {"x": v1.FixedLenFeature([2], tf.float32)})
        w = v1.get_variable("w", initializer=tf.constant(WEIGHTS))
        b = v1.get_variable("b", initializer=tf.constant(BIAS))
        score = tf.reduce_sum(features["x"] * w, axis=1) + b
        scores = tf.nn.softmax(tf.stack([-score, score], axis=1))
        classes = tf.tile(tf.constant([list(LABELS)]), [tf.shape(score)[0], 1])
        predict = _predict_signature(serialized, {"score": score, "double": tf.expand_dims(2.0 * score, 1)})
        classify = v1.saved_model.signature_def_utils.classification_signature_def(
            serialized, classes, scores)
        regress = v1.saved_model.signature_def_utils.regression_signature_def(
            serialized, tf.expand_dims(score, 1))
        scores_only = v1.saved_model.signature_def_utils.classification_signature_def(serialized, None, scores)
    return _save_tf1(graph, export_dir, {"serving_default": predict, "classify": classify, "regress": regress,
                                         "classify_scores": scores_only}, initialize=True)


def expected_linear(xs: Sequence[Sequence[float]]) -> Dict[str, np.ndarray]:
    x = np.asarray(xs, np.float32)
    score = (x * WEIGHTS).sum(axis=1) + BIAS
    both = np.stack([-score, score], axis=1)
    scores = np.exp(both) / np.exp(both).sum(axis=1, keepdims=True)
    return {"score": score, "double": 2 * score[:, None], "scores": scores.astype(np.float32),
            "outputs": score[:, None]}


def tf2_module_export(export_dir: str, input_name: str = "inputs") -> str:
    """A TF2 tf.Module (no Keras) whose one string input is named input_name, not "examples":
    y = 3 * x + 1 (x: float32[2]) and the sum of x, as tf.saved_model.save writes it."""
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=input_name)])
        def serve(self, serialized):
            x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
            return {"y": self.scale * x + 1.0, "total": tf.reduce_sum(x, axis=1)}

    module = Linear()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def estimator_varlen_export(base_dir: str, version: str = "1") -> str:
    """An Estimator-style TF1 export whose parse reads a VarLen (sparse) feature:
    tokens (int64, any number) and weight (float32, fixed [1], default 1.0);
    score = weight * sum(tokens) + count(tokens)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    export_dir = os.path.join(base_dir, version)
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        parsed = v1.parse_example(serialized, {
            "tokens": v1.VarLenFeature(tf.int64),
            "weight": v1.FixedLenFeature([1], tf.float32, default_value=[1.0])})
        tokens = tf.cast(parsed["tokens"], tf.float32)
        total = tf.sparse.reduce_sum(tokens, axis=1)
        count = tf.sparse.reduce_sum(tf.sparse.map_values(tf.ones_like, tokens), axis=1)
        score = parsed["weight"][:, 0] * total + count
        signatures = {"serving_default": _predict_signature(serialized, {"score": score})}
    return _save_tf1(graph, export_dir, signatures)


def expected_varlen(records: Sequence[Dict]) -> np.ndarray:
    return np.float32([r.get("weight", [1.0])[0] * sum(r.get("tokens", [])) + len(r.get("tokens", []))
                       for r in records])


def batch_ignoring_export(base_dir: str, static: bool) -> str:
    """A TF1 export whose output does not follow the batch: [1, 2] from the first record whatever
    the batch. static: the SignatureDef says [1, 2]; else its shape is unknown ([-1, -1])."""
    import tensorflow as tf

    v1 = tf.compat.v1
    export_dir = os.path.join(base_dir, "1")
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="examples")
        x = v1.parse_example(serialized, {"x": v1.FixedLenFeature([2], tf.float32)})["x"]
        first = x[:1]
        if static:
            out = tf.reshape(first, [1, 2])
        else:
            out = v1.placeholder_with_default(first, [None, None])
        signatures = {"serving_default": _predict_signature(serialized, {"y": out})}
    return _save_tf1(graph, export_dir, signatures)


def tf_keras_trainer_export(export_dir: str) -> Tuple[str, "object"]:
    """What a TFX Keras Trainer writes: a tf-keras (Keras 2) model, trained a step so its Adam
    optimizer has slot variables, saved with a serving signature that parses serialized
    tf.Examples (x: float32[2]). Returns (export_dir, the in-memory model)."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(7)
    inputs = tf_keras.Input(shape=(2,), name="x")
    hidden = tf_keras.layers.Dense(4, activation="relu")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1, name="y")(hidden))
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="mse")
    model.fit(np.float32([[1, 2], [3, 4]]), np.float32([[1], [0]]), epochs=1, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
        return {"y": model(x)}

    model.save(export_dir, save_format="tf", signatures={"serving_default": serve})
    return export_dir, model


def rejecting_export(export_dir: str, width: int = 4) -> str:
    """A TF2 tf.Module that rejects records whose x (float32[width]) has a negative value (an
    assertion: the record's infer dead letter) and gives y = 2 * x for the others."""
    import tensorflow as tf

    class NonNegative(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, serialized):
            x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([width], tf.float32)})["x"]
            with tf.control_dependencies([tf.debugging.assert_non_negative(x, message="x must not be negative")]):
                return {"y": 2.0 * x}

    module = NonNegative()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir
