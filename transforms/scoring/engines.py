"""Engines: what turns a batch of serialized tf.Examples into columnar outputs.

An engine is one thing, a BatchCall: records -> {output name: array [n, ...]}, loaded once per
process and shared by every thread (load_batch_call). Two are registered:

- "fast": tf.saved_model.load, the signature called on the whole batch, outputs kept columnar;
  no per-example proto is built (FastSignatureCall, here);
- "tfx-bsl": tfx-bsl's own in-process SavedModel handler, its TF1 session loader, inference and
  PredictionLog building (models.tfx_bsl_call.TfxBslBatchCall), decoded back to columns.

keep_logs=True (--output_format tfrecord) asks an engine to return PredictionLogs too, as the
column transforms.records.chunk.PREDICTION_LOG: tfx-bsl's native logs (predict, classify,
regress), or predict logs the fast engine builds from its columns. GPU set-up and timing are the
caller's wrappers (transforms.scoring.beam), not engine code.
"""

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Protocol, Sequence, Tuple

import numpy as np

from transforms.records.chunk import PREDICTION_LOG

if TYPE_CHECKING:
    from transforms.graph.model import ModelGraph

DEFAULT_ENGINE = "fast"


class BatchCall(Protocol):
    def __call__(self, records: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """Serialized tf.Examples -> {output: array with a leading axis of len(records)}; raises
        when the model fails on the batch (the executor then isolates the records at fault)."""


class FastSignatureCall:
    """One signature of a SavedModel (tf.saved_model.load), callable on a batch of records."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False):
        import tensorflow as tf

        self._tf = tf
        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._loaded = tf.saved_model.load(path)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{path} has no signature {signature!r}")
        self._fn = self._loaded.signatures[signature]
        (self.input_name,) = self._fn.structured_input_signature[1]

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        outputs = self._fn(**{self.input_name: self._tf.constant(list(serialized), self._tf.string)})
        arrays = {name: value.numpy() for name, value in outputs.items()}
        for name, value in arrays.items():
            if value.ndim == 0 or value.shape[0] != len(serialized):
                raise ValueError(f"output {name!r} has shape {value.shape}; expected a leading "
                                 f"batch axis of {len(serialized)}")
        if self._keep_logs:
            arrays[PREDICTION_LOG] = _predict_logs(serialized, arrays, self.signature, self.input_name)
        return arrays


def _predict_logs(serialized: Sequence[bytes], outputs: Mapping[str, np.ndarray], signature: str,
                  input_name: str) -> np.ndarray:
    from models.prediction_log import predict_log

    logs = np.empty(len(serialized), dtype=object)
    for i, record in enumerate(serialized):
        logs[i] = predict_log(record, {n: v[i] for n, v in outputs.items()}, signature, input_name)
    return logs


def _tfx_bsl_call(path: str, signature: str, keep_logs: bool = False):
    from models.tfx_bsl_call import TfxBslBatchCall

    return TfxBslBatchCall(path, signature, keep_logs=keep_logs)


ENGINES: Dict[str, Callable[..., BatchCall]] = {"fast": FastSignatureCall, "tfx-bsl": _tfx_bsl_call}

_CACHE: Dict[Tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


def shared_model(key: Tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """The process-wide instance for key: loaded once (by load()), shared by every thread."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def load_batch_call(engine: str, path: str, signature: str, keep_logs: bool = False) -> BatchCall:
    """The process-wide batch call of (engine, model, signature), loaded once."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return shared_model((engine, path, signature, keep_logs),
                        lambda: ENGINES[engine](path, signature, keep_logs=keep_logs))


def batch_calls(graph: "ModelGraph", keep_logs: bool = False) -> Dict[str, BatchCall]:
    """{model name: its batch call} for every node of the graph, each on its node's engine."""
    return {n.name: load_batch_call(n.engine, n.model.path, n.model.signature, keep_logs)
            for n in graph.nodes}
