"""Engines in a job: each model's BatchCall (models.serving.engines) loaded once per process.

load_batch_call shares one instance per (engine, model, signature, keep_logs) between every
thread and DoFn of the process and records each load's time (take_load_times, reported by the
scoring step); batch_calls gives a graph's calls, each on its node's engine, naming the model
and engine when one cannot load; release_batch_call forgets a version no step serves any more.
reload_batch_call loads a model again in place of a copy whose call was abandoned past
--model_timeout_s (transforms.scoring.timeouts), and serving_call gives whoever still holds the
abandoned copy (a model provider) the fresh one.
"""

import json
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Tuple

from models.serving.engines import ENGINES, BatchCall
from models.serving.model import ModelContractError
from models.serving.op_libraries import import_for_model

_CACHE: Dict[Tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()
_UNREPORTED_LOADS: List[Tuple[Tuple[Any, ...], float]] = []  # (cache key, seconds) of each load made
_REPLACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # abandoned copy -> the copy in its place


def shared_model(key: Tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """The process-wide instance for key: loaded once (by load()), shared by every thread."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            started = time.perf_counter()
            _CACHE[key] = load()
            _UNREPORTED_LOADS.append((key, time.perf_counter() - started))
        return _CACHE[key]


def _cache_key(engine: str, path: str, signature: str, keep_logs: bool, feature_spec) -> Tuple[Any, ...]:
    """A model's cache key; a signature of tensors is keyed by the spec that feeds them too."""
    if feature_spec is None:
        return engine, path, signature, keep_logs
    from models.serving.feature_spec import spec_to_json

    return engine, path, signature, keep_logs, json.dumps(spec_to_json(feature_spec), sort_keys=True)


def release_batch_call(engine: str, path: str, signature: str, keep_logs: bool = False, feature_spec=None) -> None:
    """Forgets the process-wide batch call of a model version that no scoring step serves any more
    (a refreshed stream's old version), so its memory can go."""
    with _CACHE_LOCK:
        _CACHE.pop(_cache_key(engine, path, signature, keep_logs, feature_spec), None)


def _replacement(call: Any) -> Any:
    """The copy loaded in place of call, or None (also for calls that cannot be weakly referenced)."""
    try:
        return _REPLACED.get(call)
    except TypeError:  # not weakly referenceable (a test's partial, say): never replaced
        return None


def serving_call(call: BatchCall) -> BatchCall:
    """The copy serving in place of call: call itself, or the latest reload of it (reload_batch_call)."""
    with _CACHE_LOCK:
        while (fresh := _replacement(call)) is not None:
            call = fresh
        return call


def reload_batch_call(stale: BatchCall, engine: str, path: str, signature: str, keep_logs: bool = False,
                      feature_spec=None) -> BatchCall:
    """Loads (engine, path, signature) again in place of `stale`, a copy whose call was abandoned:
    the process-wide cache and serving_call(stale) give the fresh copy from now on. A copy reloaded
    already (by another thread) is not loaded twice. Returns the copy now serving."""
    if _replacement(stale) is not None:
        return serving_call(stale)
    started = time.perf_counter()
    fresh = _load(engine, path, signature, keep_logs, feature_spec)
    key = _cache_key(engine, path, signature, keep_logs, feature_spec)
    with _CACHE_LOCK:
        if _replacement(stale) is None:
            _REPLACED[stale] = fresh
            if _CACHE.get(key) is stale:
                _CACHE[key] = fresh
            _UNREPORTED_LOADS.append((key, time.perf_counter() - started))
    return serving_call(stale)


def take_load_times() -> List[Tuple[str, float]]:
    """(model path, seconds) of each model load of this process not yet reported, once: a scoring
    DoFn reports them on its bundle's thread (Beam's metrics are per bundle), so each load is
    counted once however many DoFns share the model."""
    with _CACHE_LOCK:
        taken = [(key[1], seconds) for key, seconds in _UNREPORTED_LOADS]
        _UNREPORTED_LOADS.clear()
        return taken


def load_batch_call(engine: str, path: str, signature: str, keep_logs: bool = False, feature_spec=None
                    ) -> BatchCall:
    """The process-wide batch call of (engine, model, signature), loaded once. feature_spec: the
    spec that feeds a signature of tensors (ServingModel.engine_spec; None for tf.Example ones)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return shared_model(_cache_key(engine, path, signature, keep_logs, feature_spec),
                        lambda: _load(engine, path, signature, keep_logs, feature_spec))


def _load(engine: str, path: str, signature: str, keep_logs: bool, feature_spec=None) -> BatchCall:
    """The engine's load, after the op libraries the model needs are imported (on every worker)."""
    import_for_model(path)
    return ENGINES[engine](path, signature, keep_logs=keep_logs, feature_spec=feature_spec)


class ModelLoadError(ModelContractError):
    """A model its engine cannot load; names the model, the engine and the reason."""


def batch_calls(graph, keep_logs: bool = False) -> Dict[str, BatchCall]:
    """{model name: its batch call} for every node of a transforms.graph.model.ModelGraph (not
    imported here: the graph imports the engines' names), each on its node's engine.
    Raises ModelLoadError for a model its engine cannot load."""
    calls = {}
    for n in graph.nodes:
        try:
            calls[n.name] = load_batch_call(n.engine, n.model.path, n.model.signature, keep_logs, n.model.engine_spec)
        except Exception as e:  # pylint: disable=broad-except  # re-raised with the model and engine named
            from models.serving.errors import error_text

            raise ModelLoadError(f"model {n.name!r} at {n.model.path} cannot be loaded by the {n.engine} "
                                 f"engine: {type(e).__name__}: {error_text(e)}") from e
    return calls
