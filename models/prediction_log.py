"""Pure decoding of tfx-bsl PredictionLogs into per-example output arrays.

A predict log holds one TensorProto per output with a leading axis of 1 (tfx-bsl splits the
batch); classify and regress logs hold their results as protos. All three become
{output name: np.ndarray for one example}, the engine-neutral form rows are built from, under the
names the signature gives them (classify: classes, scores; regress: outputs), so that both engines
give the same rows.
"""

from typing import Dict

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2


class UnsupportedLogError(ValueError):
    pass


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
        return {
            "classes": np.asarray([c.label.encode() for c in classification.classes], dtype=object),
            "scores": np.asarray([c.score for c in classification.classes], dtype=np.float32),
        }
    if kind == "regress_log":
        (regression,) = log.regress_log.response.result.regressions
        return {tf.saved_model.REGRESS_OUTPUTS: np.float32(regression.value)}
    raise UnsupportedLogError(f"PredictionLog of type {kind!r} is not supported")
