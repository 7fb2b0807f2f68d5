"""TF Serving warmup requests: assets.extra/tf_serving_warmup_requests.

TF Serving replays this TFRecord file of PredictionLogs when it loads a model version, before the
version takes traffic, so the first real requests do not pay for graph initialisation. Each
record is one request of the signature's method, built from golden examples: a PredictRequest
(input `examples`: a string tensor of serialized tf.Examples) for predict signatures, a
ClassificationRequest / RegressionRequest (an example_list) for classify / regress ones.
TF Serving reads at most 1000 records.
"""

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import prediction_log_pb2

from models.preparation.signature_methods import CLASSIFY, PREDICT, REGRESS, check_method, input_key

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def warmup_log(serialized: Sequence[bytes], method: str, signature: str, model_name: str = ""
               ) -> prediction_log_pb2.PredictionLog:
    """One warmup request carrying these serialized examples."""
    log = prediction_log_pb2.PredictionLog()
    if check_method(method) == PREDICT:
        request = log.predict_log.request
        request.inputs[input_key(method)].CopyFrom(
            tf.make_tensor_proto(list(serialized), dtype=tf.string, shape=[len(serialized)]))
    else:
        request = log.classify_log.request if method == CLASSIFY else log.regress_log.request
        for record in serialized:
            request.input.example_list.examples.add().ParseFromString(record)
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    return log


def warmup_logs(serialized: Sequence[bytes], method: str, signature: str, model_name: str = ""
                ) -> List[prediction_log_pb2.PredictionLog]:
    """One single-example request per golden example (what online traffic looks like)."""
    return [warmup_log([record], method, signature, model_name)
            for record in list(serialized)[:MAX_WARMUP_RECORDS]]


def write_warmup(export_dir: str, logs: Sequence[prediction_log_pb2.PredictionLog]) -> str:
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> List[prediction_log_pb2.PredictionLog]:
    path = os.path.join(export_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]


def request_examples(log: prediction_log_pb2.PredictionLog) -> Tuple[str, str, List[bytes]]:
    """(signature name, input key, serialized examples) of one warmup request."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
        if len(request.inputs) != 1:
            raise ValueError(f"a warmup PredictRequest with inputs {sorted(request.inputs)}; expected one")
        (key, tensor), = request.inputs.items()
        return request.model_spec.signature_name, key, list(tf.make_ndarray(tensor).reshape(-1))
    if kind in ("classify_log", "regress_log"):
        request = getattr(log, kind).request
        examples = request.input.example_list.examples
        return (request.model_spec.signature_name, input_key(CLASSIFY if kind == "classify_log" else REGRESS),
                [example_pb2.Example.SerializeToString(e) for e in examples])
    raise ValueError(f"warmup record of type {kind!r}")


def replay(export_dir: str) -> List[Dict[str, np.ndarray]]:
    """Runs every warmup request's examples through the signature it names (tf.saved_model.load),
    checking the request's input key; returns each request's outputs."""
    loaded = tf.saved_model.load(export_dir)
    results = []
    for log in read_warmup(export_dir):
        signature, key, serialized = request_examples(log)
        if signature not in loaded.signatures:
            raise ValueError(f"warmup request names signature {signature!r}; the model has "
                             f"{sorted(loaded.signatures)}")
        fn = loaded.signatures[signature]
        expected = list(fn.structured_input_signature[1])
        if [key] != expected:
            raise ValueError(f"warmup request feeds {key!r}; signature {signature!r} takes {expected}")
        outputs = fn(**{key: tf.constant(serialized, tf.string)})
        results.append({name: value.numpy() for name, value in outputs.items()})
    return results
