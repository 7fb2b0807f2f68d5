"""What a signature's outputs mean, by its method, the way TF Serving answers. Pure.

Both engines give the same columns for the same model, one rule per method:

- predict: every output as the signature names it, one row per input. An output whose first
  dimension is not the number of inputs is an OutputBatchError: the model ignores the batch.
- classify (TF Serving's Classify, tfx-bsl's classify logs): "classes", k strings per record, and
  "scores", k float32 per record. A signature with scores only has labels "" (as TF Serving's
  result has), one with classes only has scores 0.0.
- regress (TF Serving's Regress): "outputs", one float32 per record; the signature's [n] or
  [n, 1] output becomes [n].

The logs: classify_log and regress_log build the PredictionLogs tfx-bsl writes for these
methods, byte for byte, from the columns. models.serving.methods holds one Method object per
method over these rules.
"""

from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from tensorflow_serving.apis import prediction_log_pb2

CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"


class OutputBatchError(ValueError):
    """Outputs that do not hold one row per input: halving the batch cannot help."""


def _batch_problem(name: str, value: np.ndarray, n: int) -> Optional[str]:
    if value.ndim == 0 or value.shape[0] != n:
        return (f"output {name!r} has shape {list(value.shape)} for {n} inputs: its first dimension "
                f"must be the number of inputs (the model ignores the batch)")
    return None


def predict_columns(outputs: Mapping[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
    for name, value in outputs.items():
        problem = _batch_problem(name, np.asarray(value), n)
        if problem:
            raise OutputBatchError(problem)
    return dict(outputs)


def classify_columns(outputs: Mapping[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    if classes is None and scores is None:
        raise ValueError(f"a classify signature needs {CLASSES!r} or {SCORES!r} outputs; it has {sorted(outputs)}")
    for name, value in ((CLASSES, classes), (SCORES, scores)):
        if value is None:
            continue
        value = np.asarray(value)
        problem = _batch_problem(name, value, n)
        if problem:
            raise OutputBatchError(problem)
        if value.ndim != 2:
            raise ValueError(f"classify output {name!r} has shape {list(value.shape)}; expected "
                             f"[batch, num_classes]")
    if classes is not None and scores is not None and np.shape(classes)[1] != np.shape(scores)[1]:
        raise ValueError(f"classify outputs disagree on the number of classes: classes "
                         f"{list(np.shape(classes))}, scores {list(np.shape(scores))}")
    if classes is not None and np.asarray(classes).dtype.kind not in "OSU":
        raise ValueError(f"classify output {CLASSES!r} is {np.asarray(classes).dtype}; expected strings")
    if scores is not None and np.asarray(scores).dtype != np.float32:
        raise ValueError(f"classify output {SCORES!r} is {np.asarray(scores).dtype}; expected float32")
    k = np.shape(classes if classes is not None else scores)[1]
    if classes is None:
        classes = np.full((n, k), b"", dtype=object)
    if scores is None:
        scores = np.zeros((n, k), np.float32)
    return {CLASSES: np.asarray(classes, dtype=object), SCORES: np.asarray(scores, np.float32)}


def regress_columns(outputs: Mapping[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
    if OUTPUTS not in outputs:
        raise ValueError(f"a regress signature needs an {OUTPUTS!r} output; it has {sorted(outputs)}")
    value = np.asarray(outputs[OUTPUTS])
    problem = _batch_problem(OUTPUTS, value, n)
    if problem:
        raise OutputBatchError(problem)
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise ValueError(f"regress output {OUTPUTS!r} has shape {list(value.shape)}; expected [batch] or [batch, 1]")
    if value.dtype != np.float32:
        raise ValueError(f"regress output {OUTPUTS!r} is {value.dtype}; expected float32")
    return {OUTPUTS: value.reshape(n)}


Spec = Tuple[str, Optional[str], Optional[Tuple[int, ...]]]  # (name, dtype name, shape with the batch axis)


def classify_log(serialized: bytes, classes: np.ndarray, scores: np.ndarray) -> prediction_log_pb2.PredictionLog:
    """One record's classify log as tfx-bsl writes it (classes, scores: that record's k values)."""
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.input.example_list.examples.add().ParseFromString(serialized)
    classification = log.classify_log.response.result.classifications.add()
    for label, score in zip(classes, scores):
        klass = classification.classes.add()
        klass.label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
        klass.score = score
    return log


def regress_log(serialized: bytes, value: float) -> prediction_log_pb2.PredictionLog:
    """One record's regress log as tfx-bsl writes it."""
    log = prediction_log_pb2.PredictionLog()
    log.regress_log.request.input.example_list.examples.add().ParseFromString(serialized)
    log.regress_log.response.result.regressions.add().value = value
    return log
