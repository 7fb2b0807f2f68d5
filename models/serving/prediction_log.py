"""PredictionLogs, the records TFX's BulkInferrer writes: decoded into per-example arrays, and
built from columnar outputs. Pure.

Decoding: a predict log holds one TensorProto per output with a leading axis of 1 (tfx-bsl splits
the batch); classify and regress logs hold their results as protos; a multi-inference log holds
one classification or regression result per signature. All become {output name: np.ndarray for
one example}, the engine-neutral form rows are built from, under the names the signature gives
them (classify: classes, scores; regress: outputs; multi-inference: the same names prefixed with
the signature, "<signature>/classes"), so that both engines give the same rows.
"""

from typing import Dict, List, Mapping

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

# The output column under which an engine returns PredictionLogs when asked to keep them.
PREDICTION_LOG = "__prediction_log__"


def log_column(logs) -> np.ndarray:
    """PredictionLogs as an output column: a 1-D object array (np.asarray would try to unpack them)."""
    column = np.empty(len(logs), dtype=object)
    for i, log in enumerate(logs):
        column[i] = log
    return column


class UnsupportedLogError(ValueError):
    pass


def _classification(classification) -> Dict[str, np.ndarray]:
    return {
        "classes": np.asarray([c.label.encode() for c in classification.classes], dtype=object),
        "scores": np.asarray([c.score for c in classification.classes], dtype=np.float32),
    }


def _regression(regression) -> Dict[str, np.ndarray]:
    return {tf.saved_model.REGRESS_OUTPUTS: np.float32(regression.value)}


def outputs_from_log(log: prediction_log_pb2.PredictionLog) -> Dict[str, np.ndarray]:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        outputs = {}
        for name, tensor in log.predict_log.response.outputs.items():
            value = tf.make_ndarray(tensor)
            outputs[name] = value[0] if value.ndim and value.shape[0] == 1 else value
        return outputs
    if kind == "classify_log":
        (classification,) = log.classify_log.response.result.classifications
        return _classification(classification)
    if kind == "regress_log":
        (regression,) = log.regress_log.response.result.regressions
        return _regression(regression)
    if kind == "multi_inference_log":
        if not log.multi_inference_log.response.results:
            raise UnsupportedLogError("multi_inference_log without results")
        outputs = {}
        for result in log.multi_inference_log.response.results:
            kind_of_result = result.WhichOneof("result")
            if kind_of_result == "classification_result":
                (one,) = result.classification_result.classifications
                part = _classification(one)
            elif kind_of_result == "regression_result":
                (one,) = result.regression_result.regressions
                part = _regression(one)
            else:
                raise UnsupportedLogError(f"multi-inference result of type {kind_of_result!r} is not supported")
            signature = result.model_spec.signature_name
            outputs.update({f"{signature}/{name}": value for name, value in part.items()})
        return outputs
    raise UnsupportedLogError(f"PredictionLog of type {kind!r} is not supported")


def _predict_log(signature: str, outputs: Mapping[str, np.ndarray]) -> prediction_log_pb2.PredictionLog:
    """A predict log holding one example's outputs (per-example arrays, no batch axis)."""
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = signature
    log.predict_log.response.model_spec.signature_name = signature
    for name, value in outputs.items():
        value = np.asarray(value)
        log.predict_log.response.outputs[name].CopyFrom(
            tf.make_tensor_proto(value, shape=(1,) + value.shape))
    return log


def predict_log(serialized: bytes, outputs: Mapping[str, np.ndarray], signature: str,
                input_alias: str = "examples") -> prediction_log_pb2.PredictionLog:
    """One example's predict log as tfx-bsl writes it; outputs hold per-example arrays (no batch
    axis); input_alias is the signature's input name."""
    log = _predict_log(signature, outputs)
    tensor = log.predict_log.request.inputs[input_alias]
    tensor.dtype = tf.string.as_datatype_enum
    tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(serialized)
    return log


def tensor_predict_logs(inputs: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray], signature: str
                        ) -> List[prediction_log_pb2.PredictionLog]:
    """The predict log of each record of a signature that takes tensors: its request holds the
    input tensors the record became ([1, ...] each, as TF Serving's PredictRequest), its response
    the outputs."""
    n = len(next(iter(columns.values()))) if columns else 0
    logs = []
    for i in range(n):
        log = _predict_log(signature, {name: value[i] for name, value in columns.items()})
        for name, value in inputs.items():
            value = np.asarray(value[i])
            log.predict_log.request.inputs[name].CopyFrom(tf.make_tensor_proto(value, shape=(1,) + value.shape))
        logs.append(log)
    return logs
