"""PredictionLogs built from columnar outputs, in the form tfx-bsl's predict handler writes them.

Only for --output_format tfrecord with the fast engine: the one place it builds per-example protos.
"""

from typing import Mapping

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2


def predict_log(serialized: bytes, outputs: Mapping[str, np.ndarray], signature: str,
                input_alias: str = "examples") -> prediction_log_pb2.PredictionLog:
    """One example's PredictionLog; outputs hold per-example arrays (no batch axis)."""
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.signature_name = signature
    log.predict_log.response.model_spec.signature_name = signature
    tensor = request.inputs[input_alias]
    tensor.dtype = tf.string.as_datatype_enum
    tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(serialized)
    for name, value in outputs.items():
        value = np.asarray(value)
        log.predict_log.response.outputs[name].CopyFrom(
            tf.make_tensor_proto(value, shape=(1,) + value.shape))
    return log
