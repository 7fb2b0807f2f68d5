"""What a local stream is doing, on the console: a progress line while it runs, the totals at the end.

pipelines.local.pubsub_acks reports each message it acknowledges (with its Pub/Sub publish time,
so the latency is publish to answer) and each row or dead letter whose publish Pub/Sub confirmed;
stream_infer prints StreamProgress.line() every --progress_every_s seconds (default
PROGRESS_EVERY_S) while messages come (every IDLE_EVERY_S when none do) and StreamProgress.totals() after it stops. Local runs only: on
Dataflow the job's monitoring page shows the same counters.
"""

import threading
import time
from typing import Callable, List, Optional

import numpy as np

PROGRESS_EVERY_S = 10.0
IDLE_EVERY_S = 60.0


def _seconds(latencies: List[float], q: float) -> str:
    return f"{float(np.percentile(latencies, q)):.2f} s"


class StreamProgress:
    """Counts and latencies since the start, and since the last progress line. Thread-safe: the
    acknowledging thread and publish callbacks add, the console thread reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.rows = self.dead_letters = self.answered = 0
            self.max_latency_s = 0.0
            self._window: List[float] = []  # latencies since the last line
            self._window_answered = 0
            self._started = self._window_started = self._last_line = self._clock()

    def published(self, dead_letter: bool) -> None:
        """A row, or a dead letter, is confirmed published."""
        with self._lock:
            if dead_letter:
                self.dead_letters += 1
            else:
                self.rows += 1

    def acknowledged(self, latencies_s: List[Optional[float]]) -> None:
        """Messages answered and acknowledged; each with its publish-to-answer latency, if known."""
        with self._lock:
            self.answered += len(latencies_s)
            self._window_answered += len(latencies_s)
            known = [s for s in latencies_s if s is not None]
            self._window.extend(known)
            if known:
                self.max_latency_s = max(self.max_latency_s, max(known))

    def due(self, every_s: float = PROGRESS_EVERY_S) -> bool:
        """Whether a progress line is due: every_s after the last with messages answered since,
        IDLE_EVERY_S (or every_s, if longer) without."""
        with self._lock:
            waited = self._clock() - self._last_line
            return waited >= (every_s if self._window_answered else max(every_s, IDLE_EVERY_S))

    def line(self, in_flight: int = 0) -> str:
        """The progress line; starts the next window."""
        with self._lock:
            now = self._clock()
            seconds = max(now - self._window_started, 1e-9)
            rate = self._window_answered / seconds
            latency = (f"; latency p50 {_seconds(self._window, 50)}, p99 {_seconds(self._window, 99)}"
                       if self._window else "")
            text = (f"stream_infer: {self.answered:,} messages answered; {self.rows:,} rows, "
                    f"{self.dead_letters:,} dead letters out; {rate:,.1f} msg/s over the last {seconds:.0f} s"
                    f"{latency}; {in_flight:,} in flight")
            self._window, self._window_answered = [], 0
            self._window_started = self._last_line = now
            return text

    def totals(self) -> str:
        with self._lock:
            seconds = max(self._clock() - self._started, 1e-9)
            return (f"stream_infer: in {seconds:,.0f} s: {self.answered:,} messages answered, "
                    f"{self.rows:,} rows and {self.dead_letters:,} dead letters out, "
                    f"{self.answered / seconds:,.1f} msg/s, max latency {self.max_latency_s:.2f} s")


PROGRESS = StreamProgress()


def print_progress_until(stopped: threading.Event, in_flight: Callable[[], int], write: Callable[[str], None],
                         every_s: float = PROGRESS_EVERY_S) -> threading.Thread:
    """A daemon thread that writes PROGRESS.line() whenever one is due, until stopped is set."""
    def loop():
        while not stopped.wait(min(1.0, every_s)):
            if PROGRESS.due(every_s):
                write(PROGRESS.line(in_flight()))
    thread = threading.Thread(target=loop, name="stream-progress", daemon=True)
    thread.start()
    return thread
