"""Predict, classify and regress serving signatures (SignatureDef method names).

TF2 exports always write method_name tensorflow/serving/predict. tfx-bsl picks its handler from
the method name (tfx_bsl/beam/run_inference.py, _get_operation_type) and TF Serving's Classify and
Regress APIs require it, so for `--method classify|regress` the signature is built in the shape
those expect and its method name is rewritten in saved_model.pb after the export is written
(the TF2 loader ignores method names; fingerprint.pb is rewritten to match):

- classify: input `inputs` (DT_STRING serialized tf.Example); outputs `classes` (string
  [batch, n]: the class labels, default "0".."n-1") and `scores` (float32 [batch, n]: the model's
  scores output). tfx-bsl yields classify_log PredictionLogs.
- regress: input `inputs`; one output `outputs` (float32 [batch]). tfx-bsl yields regress_log.
- predict: input `examples`; the model's outputs by name. tfx-bsl yields predict_log.

tfx-bsl accepts no other outputs in classify (1 or 2) and regress (exactly 1) signatures, so
passthrough features need the predict method.
"""

import os
from typing import Dict, Mapping, Optional, Sequence

import tensorflow as tf

from models.serving import methods

# the --method names: the short names of models.serving.methods' Method objects
PREDICT, CLASSIFY, REGRESS = (m.name for m in methods.METHODS)
METHODS = (PREDICT, CLASSIFY, REGRESS)
SCORES_OUTPUT = tf.saved_model.CLASSIFY_OUTPUT_SCORES  # "scores"


class SignatureMethodError(ValueError):
    """A model whose outputs do not fit the requested method."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise SignatureMethodError(f"--method {method!r} is not one of {METHODS}")
    return method


def input_key(method: str) -> str:
    """The serving signature's one input: `inputs` for classify/regress (their APIs' key)."""
    return methods.method_named(check_method(method)).input_key


def _single_output(outputs: Mapping[str, tf.Tensor], preferred: str, method: str) -> tf.Tensor:
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    if preferred in outputs:
        return outputs[preferred]
    raise SignatureMethodError(
        f"--method {method} needs a model with one output (or one named {preferred!r}); "
        f"it has {sorted(outputs)}")


def method_outputs(outputs: Mapping[str, tf.Tensor], method: str,
                   class_labels: Optional[Sequence[str]] = None) -> Dict[str, tf.Tensor]:
    """The model's outputs in the shape the method's signature needs (graph or eager)."""
    check_method(method)
    if method == PREDICT:
        if class_labels:
            raise SignatureMethodError("class labels apply to --method classify")
        return dict(outputs)
    if method == CLASSIFY:
        scores = _single_output(outputs, SCORES_OUTPUT, method)
        if scores.shape.rank != 2 or scores.shape[1] is None or not scores.dtype.is_floating:
            raise SignatureMethodError(
                f"--method classify needs float scores of shape [batch, classes]; the model gives "
                f"{scores.dtype.name} {scores.shape}")
        n = scores.shape[1]
        labels = list(class_labels) if class_labels else [str(i) for i in range(n)]
        if len(labels) != n:
            raise SignatureMethodError(f"{len(labels)} class labels for {n} scores")
        classes = tf.broadcast_to(tf.constant(labels, tf.string), tf.shape(scores))
        return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes,
                SCORES_OUTPUT: tf.cast(scores, tf.float32)}
    if class_labels:
        raise SignatureMethodError("class labels apply to --method classify")
    value = _single_output(outputs, tf.saved_model.REGRESS_OUTPUTS, method)
    if value.shape.rank not in (1, 2) or (value.shape.rank == 2 and value.shape[1] != 1) \
            or not (value.dtype.is_floating or value.dtype.is_integer):
        raise SignatureMethodError(
            f"--method regress needs one number per example ([batch] or [batch, 1]); the model gives "
            f"{value.dtype.name} {value.shape}")
    return {tf.saved_model.REGRESS_OUTPUTS: tf.reshape(tf.cast(value, tf.float32), [-1])}


def set_method_name(export_dir: str, signature: str, method: str) -> None:
    """Rewrites the signature's method name in saved_model.pb (and fingerprint.pb to match)."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model import fingerprinting_utils

    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if signature in meta_graph.signature_def:
            meta_graph.signature_def[signature].method_name = methods.method_named(check_method(method)).method_name
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString(deterministic=True))
    if tf.io.gfile.exists(os.path.join(export_dir, "fingerprint.pb")):
        fingerprinting_utils.write_fingerprint(export_dir)
