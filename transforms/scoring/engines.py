"""Engines: what turns a batch of serialized tf.Examples into columnar outputs.

An engine is one thing, a BatchCall: records -> {output name: array [n, ...]}, loaded once per
process and shared by every thread (load_batch_call). Two are registered:

- "fast": tf.saved_model.load, the signature called on the whole batch, outputs kept columnar;
  no per-example proto is built (FastSignatureCall, here; SessionSignatureCall, the TF1 loader,
  for the SavedModels the TF2 loader cannot restore);
- "tfx-bsl": tfx-bsl's own in-process SavedModel handler, its TF1 session loader, inference and
  PredictionLog building (models.tfx_bsl_call.TfxBslBatchCall), decoded back to columns.

Both give the columns models.serving_results defines for the signature's method (predict as
the signature names them; classify: classes and scores; regress: outputs), so rows do not depend
on the engine. keep_logs=True (--output_format tfrecord) asks an engine to return PredictionLogs
too, as the column transforms.records.chunk.PREDICTION_LOG: tfx-bsl's native logs, or the same
predict, classify or regress logs built by the fast engine from its columns. GPU set-up and timing are the
caller's wrappers (transforms.scoring.beam), not engine code.
"""

import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Protocol, Sequence, Tuple

import numpy as np

from models.contract import serving_meta_graph
from models.serving_model import ModelContractError
from models.prediction_log import log_column, predict_log
from models.serving_results import (CLASSES, CLASSIFY, OUTPUTS, REGRESS, SCORES, classify_log, method_columns,
                                    regress_log)
from transforms.records.chunk import PREDICTION_LOG
from transforms.records.serialized import string_tensor

DEFAULT_ENGINE = "fast"
TFX_BSL_ENGINE = "tfx-bsl"


class BatchCall(Protocol):
    def __call__(self, records: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """Serialized tf.Examples -> {output: array with a leading axis of len(records)}; raises
        when the model fails on the batch (the executor then isolates the records at fault)."""


class _SignatureColumns:
    """What both forms of the fast engine share: raw outputs -> the method's columns (and logs)."""

    path: str
    signature: str
    input_name: str
    method: str
    _keep_logs: bool

    def _columns(self, serialized: Sequence[bytes], outputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = method_columns(self.method, outputs, len(serialized))
        if self._keep_logs:
            arrays[PREDICTION_LOG] = self._logs(serialized, arrays)
        return arrays

    def _logs(self, serialized: Sequence[bytes], columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The PredictionLogs tfx-bsl writes for this signature's method, from the columns."""
        if self.method == CLASSIFY:
            logs = [classify_log(r, columns[CLASSES][i], columns[SCORES][i]) for i, r in enumerate(serialized)]
        elif self.method == REGRESS:
            logs = [regress_log(r, columns[OUTPUTS][i]) for i, r in enumerate(serialized)]
        else:
            logs = [predict_log(r, {n: v[i] for n, v in columns.items()}, self.signature, self.input_name)
                    for i, r in enumerate(serialized)]
        return log_column(logs)


class FastSignatureCall(_SignatureColumns):
    """One signature of a SavedModel (tf.saved_model.load), callable on a batch of records."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False):
        import tensorflow as tf

        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._loaded = tf.saved_model.load(path)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{path} has no signature {signature!r}")
        self._fn = self._loaded.signatures[signature]
        (self.input_name,) = self._fn.structured_input_signature[1]
        # the TF2 loader drops method names; saved_model.pb still has them
        self.method = serving_meta_graph(path).signature_def[signature].method_name

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        outputs = self._fn(**{self.input_name: string_tensor(serialized)})
        return self._columns(serialized, {name: value.numpy() for name, value in outputs.items()})


class SessionSignatureCall(_SignatureColumns):
    """The fast engine for SavedModels the TF2 loader cannot restore (a tf-keras Trainer export
    with optimizer slot variables: "'_UserObject' object has no attribute 'add_slot'"): the TF1
    loader, as tfx-bsl uses, and the signature's tensors run in a session on the whole batch."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False):
        import tensorflow as tf

        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self._session, [tf.saved_model.SERVING], path)
        if signature not in meta_graph.signature_def:
            raise ValueError(f"{path} has no signature {signature!r}")
        signature_def = meta_graph.signature_def[signature]
        ((self.input_name, tensor),) = signature_def.inputs.items()
        self._feed = tensor.name
        self._fetches = {name: info.name for name, info in signature_def.outputs.items()}
        self.method = signature_def.method_name

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        outputs = self._session.run(self._fetches, feed_dict={self._feed: list(serialized)})
        return self._columns(serialized, outputs)


def load_fast(path: str, signature: str, keep_logs: bool = False) -> BatchCall:
    """The fast engine: the TF2 loader, or the TF1 loader where the TF2 one cannot restore the
    model (the error is kept when neither can)."""
    try:
        return FastSignatureCall(path, signature, keep_logs)
    except Exception as tf2_error:  # pylint: disable=broad-except  # the TF1 loader may still load it
        try:
            return SessionSignatureCall(path, signature, keep_logs)
        except Exception:  # pylint: disable=broad-except  # the first error says more
            raise tf2_error from None


def _tfx_bsl_call(path: str, signature: str, keep_logs: bool = False):
    from models.tfx_bsl_call import TfxBslBatchCall

    return TfxBslBatchCall(path, signature, keep_logs=keep_logs)


ENGINES: Dict[str, Callable[..., BatchCall]] = {DEFAULT_ENGINE: load_fast, TFX_BSL_ENGINE: _tfx_bsl_call}

_CACHE: Dict[Tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()
_UNREPORTED_LOADS: List[Tuple[Tuple[Any, ...], float]] = []  # (cache key, seconds) of each load made


def shared_model(key: Tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """The process-wide instance for key: loaded once (by load()), shared by every thread."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            started = time.perf_counter()
            _CACHE[key] = load()
            _UNREPORTED_LOADS.append((key, time.perf_counter() - started))
        return _CACHE[key]


def release_batch_call(engine: str, path: str, signature: str, keep_logs: bool = False) -> None:
    """Forgets the process-wide batch call of a model version that no scoring step serves any more
    (a refreshed stream's old version), so its memory can go."""
    with _CACHE_LOCK:
        _CACHE.pop((engine, path, signature, keep_logs), None)


def take_load_times() -> List[Tuple[str, float]]:
    """(model path, seconds) of each model load of this process not yet reported, once: a scoring
    DoFn reports them on its bundle's thread (Beam's metrics are per bundle), so each load is
    counted once however many DoFns share the model."""
    with _CACHE_LOCK:
        taken = [(key[1], seconds) for key, seconds in _UNREPORTED_LOADS]
        _UNREPORTED_LOADS.clear()
        return taken


def load_batch_call(engine: str, path: str, signature: str, keep_logs: bool = False) -> BatchCall:
    """The process-wide batch call of (engine, model, signature), loaded once."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return shared_model((engine, path, signature, keep_logs),
                        lambda: ENGINES[engine](path, signature, keep_logs=keep_logs))


class ModelLoadError(ModelContractError):
    """A model its engine cannot load; names the model, the engine and the reason."""


def batch_calls(graph, keep_logs: bool = False) -> Dict[str, BatchCall]:
    """{model name: its batch call} for every node of a transforms.graph.model.ModelGraph (not
    imported here: the graph imports the engines' names), each on its node's engine.
    Raises ModelLoadError for a model its engine cannot load."""
    calls = {}
    for n in graph.nodes:
        try:
            calls[n.name] = load_batch_call(n.engine, n.model.path, n.model.signature, keep_logs)
        except Exception as e:  # pylint: disable=broad-except  # re-raised with the model and engine named
            from transforms.records.dead_letters import error_text

            raise ModelLoadError(f"model {n.name!r} at {n.model.path} cannot be loaded by the {n.engine} "
                                 f"engine: {type(e).__name__}: {error_text(e)}") from e
    return calls
