"""SavedModels exported the way users' own tools export them, not through models.prepare.

tf1_linear_export: a TF1 SavedModelBuilder export (graph mode, variables, a tf.Example parse op)
with predict, classify and regress signatures, the shape Estimator and TF1 exports have:

    score  = x . w + b                 (x: float32[2] feature "x", w = [0.5, -1.5], b = 0.25)
    predict:  inputs "examples" -> {"score": [n], "double": [n, 1] = 2 * score}
    classify: inputs "inputs"   -> {"classes": [n, 2] ("neg", "pos"), "scores": [n, 2] = softmax([-score, score])}
    regress:  inputs "inputs"   -> {"outputs": [n, 1] = score}

expected_linear(values) gives the same numbers from plain numpy, for checking rows and logs.
"""

import os
from typing import Dict, Sequence

import numpy as np

WEIGHTS = np.float32([0.5, -1.5])
BIAS = np.float32(0.25)
LABELS = (b"neg", b"pos")


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
        info = v1.saved_model.utils.build_tensor_info
        predict = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"examples": info(serialized)},
            outputs={"score": info(score), "double": info(tf.expand_dims(2.0 * score, 1))},
            method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        classify = v1.saved_model.signature_def_utils.classification_signature_def(
            serialized, classes, scores)
        regress = v1.saved_model.signature_def_utils.regression_signature_def(
            serialized, tf.expand_dims(score, 1))
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": predict, "classify": classify, "regress": regress})
            builder.save()
    return export_dir


def expected_linear(xs: Sequence[Sequence[float]]) -> Dict[str, np.ndarray]:
    x = np.asarray(xs, np.float32)
    score = (x * WEIGHTS).sum(axis=1) + BIAS
    both = np.stack([-score, score], axis=1)
    scores = np.exp(both) / np.exp(both).sum(axis=1, keepdims=True)
    return {"score": score, "double": 2 * score[:, None], "scores": scores.astype(np.float32),
            "outputs": score[:, None]}
