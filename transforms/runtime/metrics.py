"""Beam counters shared by every stage, and the end-of-run table built from them."""

import sys
import threading
import time
from typing import Dict, Mapping, Optional, Set

import apache_beam as beam

NAMESPACE = "tfinfer"
RECORDS_READ = "records_read"
PREDICTIONS_WRITTEN = "predictions_written"
DEAD_LETTER_PREFIX = "dead_letters_"
STREAM_BATCH_SIZE = "stream_batch_size"  # a distribution: messages per scored streaming batch

_counters: Dict[str, "beam.metrics.metric.Metrics.DelegatingCounter"] = {}


def counter(name: str):
    if name not in _counters:
        _counters[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
    return _counters[name]


def dead_letter_counter(stage: str):
    return counter(DEAD_LETTER_PREFIX + stage)


def distribution(name: str):
    return beam.metrics.Metrics.distribution(NAMESPACE, name)


def string_set(name: str):
    return beam.metrics.Metrics.string_set(NAMESPACE, name)


def query_string_sets(result) -> Dict[str, Set[str]]:
    """{name: the union of its values} of a finished run's string sets.

    Beam 2.77's FnApiRunner keeps one string set per worker and its query() returns the last one
    only (it has no combiner for sets), so where the raw monitoring infos are at hand, they are
    merged here."""
    found: Dict[str, Set[str]] = {}
    raw = getattr(result.metrics(), "monitoring_infos", None)
    if raw is not None:
        from apache_beam.metrics import monitoring_infos as infos

        for info in raw():
            if infos.is_string_set(info) and infos.is_user_monitoring_info(info):
                namespace, name = infos.parse_namespace_and_name(info)
                if namespace == NAMESPACE:
                    found.setdefault(name, set()).update(infos.extract_string_set_value(info))
        return found
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    for s in query.get("string_sets", []):
        value = s.committed if s.committed is not None else s.attempted
        found.setdefault(s.key.metric.name, set()).update(value or ())
    return found


def query_counters(result) -> Dict[str, int]:
    """Committed (or, where a runner has none, attempted) counter values of a finished run."""
    totals: Dict[str, int] = {}
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (value or 0)
    return totals


def query_distributions(result) -> Dict[str, Dict[str, float]]:
    """{name: {count, sum, min, max, mean}} of a finished run's distributions, merged over workers."""
    merged: Dict[str, Dict[str, float]] = {}
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    for d in query.get("distributions", []):
        value = d.committed if d.committed is not None else d.attempted
        if value is None or not value.count:
            continue
        seen = merged.setdefault(d.key.metric.name, {"count": 0, "sum": 0, "min": value.min, "max": value.max})
        seen["count"] += value.count
        seen["sum"] += value.sum
        seen["min"], seen["max"] = min(seen["min"], value.min), max(seen["max"], value.max)
    for seen in merged.values():
        seen["mean"] = seen["sum"] / seen["count"]
    return merged


def format_counters(totals: Dict[str, int], notes: Optional[Mapping[str, str]] = None) -> str:
    """The counter table, sorted by name; a counter in notes has its note in parentheses beside
    it (accounting.counter_table passes the notes of the counters whose names do not say it)."""
    notes = notes or {}
    width = max([len(k) for k in totals] + [10])
    return "\n".join(f"  {name:<{width}}  {totals[name]:>12,}" + (f"  ({notes[name]})" if name in notes else "")
                     for name in sorted(totals))


class Progress:
    """A throttled progress line on stderr for long local runs (one per worker process)."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic):
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {}
        self._start = None
        self._last = None
        self.enabled = True  # a stream prints its own progress line (pipelines/local/stream_progress.py)

    def reset(self) -> None:
        with self._lock:
            self._counts, self._start, self._last = {}, None, None

    def add(self, name: str, n: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            if self._start is None:
                self._start = self._last = now
            self._counts[name] = self._counts.get(name, 0) + n
            if now - self._last >= self._interval:
                self._last = now
                rate = self._counts.get(RECORDS_READ, 0) / max(now - self._start, 1e-9)
                parts = ", ".join(f"{k} {v:,}" for k, v in sorted(self._counts.items()))
                print(f"progress: {parts} ({rate:,.0f} records/s)", file=sys.stderr, flush=True)


PROGRESS = Progress()
