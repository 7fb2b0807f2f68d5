"""Model calls with a time limit (--model_timeout_s): a call past it is abandoned, the model reloaded.

TensorFlow cannot stop a running call from Python, so time_limited runs each call on a worker
thread and waits at most timeout_s. Each calling thread has one worker of its own, kept from call
to call (a fresh thread per call cost 20% of a small model's throughput: TensorFlow builds its
per-thread state anew on each thread), so calls from several threads still run side by side. A
call past the limit is abandoned with its worker: the worker (a daemon, so it never holds the
process at exit) is left to finish or hang by itself, and the calling thread gets a new one; until
the call returns it keeps its batch and the model copy it ran on in memory. The caller reloads the model
through `reload` (the hung call may hold that copy's locks, queues or device streams; the engines'
process-wide cache then serves the fresh copy: transforms.scoring.engines.reload_batch_call) and
raises ModelTimeoutError. The executor isolates that like any failing call (halving), so a record
that always hangs ends as an `infer` dead letter naming the limit, the rest of its batch scored;
it costs about log2(batch size) + 2 timeouts (the whole batch is tried twice; a batch of 256: 10).

A hung call holds its copy: another call on that copy waits behind it (with a SavedModel sleeping
5 s in one call, a second call on the same copy took 9.6 s, on a fresh copy 0.06 s), so every
timeout reloads, and no later call runs on a copy a hung call holds.

Bounds: at most MAX_HUNG_CALLS abandoned calls may still run in a process; past that a call fails
at once (ModelTimeoutError, saying why) instead of starting another thread, and its records
become dead letters rather than a stall. Each holds one copy of its model until it returns, so a
model that hangs for ever on some records costs at most MAX_HUNG_CALLS more copies of its memory
(a copy that cannot be loaded again, out of memory say, is kept and the limit is its error).

stop_waiting() (a local stream's stop once its drain time is over, and interpreter exit): every
wait for a model call ends at once with ScoringAbandoned, a BaseException, so that no record
becomes a dead letter for it (the executor isolates Exceptions only): a stream hands its
messages back instead, and a batch job stopped by Ctrl-C exits without waiting for the call.
"""

import concurrent.futures.thread  # noqa: F401  # registers its exit hook first, so ours runs before it
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

DEFAULT_MODEL_TIMEOUT_S = 300.0  # a GPU model's first call (kernels compiled, cuDNN tuned) or a heavy batch fits
MAX_HUNG_CALLS = 16  # abandoned calls still running, per process (isolating one in a GPU batch of 4,096: 14)
POLL_S = 0.05  # how often a waiting caller looks at the stop flag

BatchCall = Callable[[Sequence[bytes]], Dict[str, Any]]


class ModelTimeoutError(RuntimeError):
    """A model call that ran past --model_timeout_s (abandoned), or one not started because too
    many abandoned calls still run; isolated by the executor like any failing call."""


class ScoringAbandoned(BaseException):
    """The process stopped waiting for model calls (a stream's stop, interpreter exit). Not an
    Exception, so the executor's isolation lets it through and no record becomes a dead letter."""


_STOP = threading.Event()


def stop_waiting() -> None:
    """Every wait for a model call, now and later, ends with ScoringAbandoned (until resume_waiting)."""
    _STOP.set()


def resume_waiting() -> None:
    """Model calls are waited for again (a new stream in this process)."""
    _STOP.clear()


_register_at_exit = getattr(threading, "_register_atexit", None)  # before non-daemon threads are joined
if _register_at_exit is not None:
    _register_at_exit(_STOP.set)


class _Call:
    """One model call, run by a worker: its outputs or error once done."""

    def __init__(self, call: BatchCall, records: Sequence[bytes], model: str):
        self.call, self.records, self.model = call, records, model
        self.done = threading.Event()
        self.outputs: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.outputs = self.call(self.records)
        except BaseException as e:  # pylint: disable=broad-except  # raised again on the waiting thread
            self.error = e
        finally:
            self.records = None  # an abandoned call keeps its batch no longer than it runs
            self.done.set()

    def wait(self, timeout_s: float) -> bool:
        """True once the call is done within timeout_s; ScoringAbandoned once stop_waiting() was called."""
        deadline = time.monotonic() + timeout_s
        while not self.done.wait(max(min(POLL_S, deadline - time.monotonic()), 0.0)):
            if _STOP.is_set():
                raise ScoringAbandoned(f"stopped waiting for a call of model {self.model!r}")
            if time.monotonic() >= deadline:
                return False
        return True

    def result(self) -> Dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.outputs


class _Worker:
    """A daemon thread that runs one calling thread's model calls, one at a time."""

    def __init__(self):
        self._calls: "queue.SimpleQueue[_Call]" = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="model-calls", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._calls.get().run()

    def submit(self, call: _Call) -> None:
        self._calls.put(call)


_WORKERS = threading.local()


def _worker() -> _Worker:
    """This thread's worker (made on first use, and again after one was abandoned)."""
    worker = getattr(_WORKERS, "worker", None)
    if worker is None:
        worker = _WORKERS.worker = _Worker()
    return worker


def abandon_worker() -> None:
    """This thread's worker is stuck in an abandoned call: the next call gets a new one."""
    _WORKERS.worker = None


class HungCalls:
    """The abandoned calls of this process that still run."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: List[_Call] = []

    def add(self, call: _Call) -> None:
        with self._lock:
            self._calls.append(call)

    def count(self) -> int:
        with self._lock:
            self._calls = [c for c in self._calls if not c.done.is_set()]
            return len(self._calls)


HUNG = HungCalls()


def time_limited(call: BatchCall, timeout_s: Optional[float], model: str = "model",
                 reload: Optional[Callable[[BatchCall], BatchCall]] = None) -> BatchCall:
    """call, each use run on its own thread for at most timeout_s (None or 0: call as is). Past
    it the call is abandoned, reload(call) gives the copy that serves from then on, and
    ModelTimeoutError is raised."""
    if not timeout_s:
        return call
    serving = [call]

    def run(records: Sequence[bytes]) -> Dict[str, Any]:
        running = start_call(serving[0], records, model)
        if running.wait(timeout_s):
            return running.result()
        HUNG.add(running)
        abandon_worker()
        reloaded = reloaded_copy(serving[0], reload)
        serving[0] = reloaded or serving[0]
        raise ModelTimeoutError(
            f"model {model!r} did not answer a batch of {len(records):,} record(s) within "
            f"--model_timeout_s {timeout_s:g}: the call was abandoned and "
            + ("the model reloaded" if reloaded else "the model could not be reloaded"))
    return run


def start_call(call: BatchCall, records: Sequence[bytes], model: str) -> _Call:
    """The call started on this thread's worker; ModelTimeoutError instead when MAX_HUNG_CALLS still run."""
    if _STOP.is_set():
        raise ScoringAbandoned(f"stopped waiting for model calls; model {model!r} not called")
    hung = HUNG.count()
    if hung >= MAX_HUNG_CALLS:
        raise ModelTimeoutError(f"model {model!r} not called: {hung} earlier model calls of this process "
                                f"still run past --model_timeout_s (at most {MAX_HUNG_CALLS})")
    running = _Call(call, records, model)
    _worker().submit(running)
    return running


def reloaded_copy(copy: BatchCall, reload: Optional[Callable[[BatchCall], BatchCall]]) -> Optional[BatchCall]:
    """reload(copy), the fresh copy serving in place of one a hung call holds; None without a
    reload or when it fails (the copy in place serves on)."""
    if reload is None:
        return None
    try:
        return reload(copy)
    except Exception:  # pylint: disable=broad-except  # a copy that cannot reload still serves; the timeout is the error
        return None
