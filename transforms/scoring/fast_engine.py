"""The fast engine: tf.saved_model.load once per process, the signature called on whole batches.

Outputs stay columnar ({name: array [batch, ...]}); no per-example proto is built unless
PredictionLog output is asked for (transforms.sinks.prediction_logs). Two users:
- FastKeyedHandler, here: a Beam ModelHandler for keyed records, so RunKeyedInference composes;
- transforms.records.chunk.score_chunk: a whole RecordChunk scored in one call (the chunked batch
  path, where a batch of records, not one record, is the pipeline element).
isolate_failures, shared by both paths and both engines, halves a failing batch.
"""

import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from apache_beam.ml.inference import base

from transforms.runtime.gpu import GpuSettings

_CACHE: Dict[Tuple[str, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


class LoadedSignature:
    """One signature of a SavedModel, callable on a list of serialized tf.Examples."""

    def __init__(self, path: str, signature: str):
        import tensorflow as tf

        self._tf = tf
        self.path = path
        self.signature = signature
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
        return arrays


def shared_model(key: Tuple[str, ...], load: Callable[[], Any]) -> Any:
    """The process-wide instance for key: loaded once (by load()), shared by every thread."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def shared_signature(path: str, signature: str) -> LoadedSignature:
    return shared_model(("fast", path, signature), lambda: LoadedSignature(path, signature))


def split_rows(outputs: Mapping[str, np.ndarray], count: int) -> List[Dict[str, np.ndarray]]:
    return [{name: value[i] for name, value in outputs.items()} for i in range(count)]


class FastKeyedHandler(base.ModelHandler):
    """(key, serialized example) batches -> (key, {output: per-example array})."""

    def __init__(self, path: str, signature: str, batching: Mapping[str, int], gpu: Optional[GpuSettings] = None):
        super().__init__()
        self._path = path
        self._signature = signature
        self._batching = dict(batching)
        self._gpu = gpu or GpuSettings()

    def load_model(self) -> LoadedSignature:
        self._gpu.apply()
        return shared_signature(self._path, self._signature)

    def run_inference(self, batch, model, inference_args=None):
        keys = [key for key, _ in batch]
        outputs = model([record for _, record in batch])
        return list(zip(keys, split_rows(outputs, len(keys))))

    def get_num_bytes(self, batch) -> int:
        return sum(len(record) for _, record in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_metrics_namespace(self) -> str:
        return "tfinfer_fast_engine"


def isolate_failures(run: Callable[[List[Any]], Any], items: Sequence[Any]
                     ) -> Tuple[List[Tuple[List[Any], Any]], List[Tuple[Any, BaseException]]]:
    """Runs run(items); on failure halves the batch until each failing item is alone.

    Returns the (items, result) parts that succeeded, in order, and (item, error) per item that
    fails by itself. A batch without bad items costs one call; one bad item among n about 2 log2 n.
    """
    items = list(items)
    try:
        return [(items, run(items))], []
    except Exception as e:  # pylint: disable=broad-except  # isolated below, then a dead letter
        if len(items) == 1:
            return [], [(items[0], e)]
        middle = len(items) // 2
        left_ok, left_bad = isolate_failures(run, items[:middle])
        right_ok, right_bad = isolate_failures(run, items[middle:])
        return left_ok + right_ok, left_bad + right_bad


def concat_parts(parts: Sequence[Tuple[List[int], Dict[str, np.ndarray]]]
                 ) -> Tuple[List[int], Optional[Dict[str, np.ndarray]]]:
    if not parts:
        return [], None
    if len(parts) == 1:
        return parts[0]
    indices = [i for part_indices, _ in parts for i in part_indices]
    names = parts[0][1].keys()
    return indices, {n: np.concatenate([outputs[n] for _, outputs in parts]) for n in names}
