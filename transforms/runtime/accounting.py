"""Accounting: the counters that prove conservation, and the inference metrics, in one place.

    records read (+ read dead letters) = predictions + dead letters, per job
    records that reached the models = that model's outputs + dead letters naming it, per model

Stages report what happened to their records (read n, these dead letters, n rows, these model
calls); no other code touches these counters. One Accounting per DoFn instance, created in its
setup(), updated once per chunk, always on the bundle's thread (Beam's metrics are per thread).
"""

import os
import socket
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import apache_beam as beam

from transforms.records.dead_letters import DEAD_LETTER_TAG
from transforms.runtime import metrics

MODEL_OUTPUTS_PREFIX = "model_outputs_"
MODEL_DEAD_LETTERS_PREFIX = "model_dead_letters_"
# Beam RunInference's own metric names, so dashboards built for it read ours too
NUM_INFERENCES = "num_inferences"
BATCH_SIZE = "inference_request_batch_size"
BATCH_LATENCY_US = "inference_batch_latency_micro_secs"
LOAD_LATENCY_MS = "load_model_latency_milli_secs"
FAILED_BATCHES = "failed_batches_counter"
REFUSED_DEAD_LETTERS = "errors_table_refused"
UNREADABLE_REGIONS = "unreadable_regions"  # corrupt file regions, each one read dead letter
UNREADABLE_BYTES = "unreadable_bytes"  # the bytes they skipped (where known)
MODELS_LOADED = "models_loaded"  # model loads, each process loading each model once
SCORING_PROCESSES = "scoring_processes"  # a string set: HOST:PID of every process that scored
MODEL_REFRESHES = "model_refreshes"  # new model versions swapped into a running stream
MODEL_REFRESH_FAILURES = "model_refresh_failures"  # new versions refused (the current one kept serving)
MODEL_REFRESH_MS = "model_refresh_milli_secs"  # a distribution: new version found -> ready to serve
PUBLISH_TO_RESULT_MS = "publish_to_result_latency_milli_secs"  # streams: Pub/Sub publish -> scored
MODEL_BYTES = "model_byte_size"  # a distribution: the size on disk of each model loaded
DUPLICATE_KEYS = "duplicate_keys"  # records whose key another record of the job has (transforms.runtime.duplicate_keys)
READ_AS_ARRAYS = "records_read_as_arrays"  # rows handed to a signature of tensors in bulk (transforms.sources.columnar)


# What the counters whose names do not say it count, printed beside them (metrics.format_counters)
COUNTER_NOTES = {
    FAILED_BATCHES: "model calls that failed as a whole and were split to isolate the bad records",
    NUM_INFERENCES: "records scored, summed over the models",
    MODELS_LOADED: "model loads, one per model per worker process",
    REFUSED_DEAD_LETTERS: "dead letters their own sink refused (logged)",
    UNREADABLE_REGIONS: "corrupt file regions skipped, each one read dead letter",
    UNREADABLE_BYTES: "bytes those regions skipped, where known",
    MODEL_REFRESHES: "new model versions swapped into the stream",
    MODEL_REFRESH_FAILURES: "new model versions refused; the current one served on",
    DUPLICATE_KEYS: "records whose key an earlier record already had",
    READ_AS_ARRAYS: "rows read in bulk as the model's arrays, without a tf.Example each",
}



def counter_table(totals: Mapping[str, int]) -> str:
    """The end-of-run counter table, with COUNTER_NOTES beside the counters they explain."""
    return metrics.format_counters(dict(totals), COUNTER_NOTES)

def model_metric_name(metric: str, model: str) -> str:
    """Per model: RunInference's metric name with "_<model name>" appended."""
    return f"{metric}_{model}"


class Accounting:
    def __init__(self):
        self._read = metrics.counter(metrics.RECORDS_READ)
        self._predictions = metrics.counter(metrics.PREDICTIONS_WRITTEN)
        self._inferences = metrics.counter(NUM_INFERENCES)
        self._failed_batches = metrics.counter(FAILED_BATCHES)
        self._batch_size = metrics.distribution(BATCH_SIZE)
        self._latency = metrics.distribution(BATCH_LATENCY_US)

    def read(self, n: int) -> None:
        """n records came out of a source (each is then scored or a dead letter)."""
        if n:
            self._read.inc(n)
            metrics.PROGRESS.add(metrics.RECORDS_READ, n)

    def read_as_arrays(self, n: int) -> None:
        """n of the records read came in bulk, as feature arrays (counted as read too)."""
        if n:
            metrics.counter(READ_AS_ARRAYS).inc(n)

    def unreadable_region(self, bytes_skipped) -> None:
        """A file region that could not be read (its one dead letter is counted as such too);
        bytes_skipped is None where unknown (past a corrupt spot in a gzip stream)."""
        metrics.counter(UNREADABLE_REGIONS).inc()
        if bytes_skipped:
            metrics.counter(UNREADABLE_BYTES).inc(bytes_skipped)

    def dead_letters(self, rows: Iterable[Mapping]) -> None:
        """Dead letters leaving a stage: by stage, and by model when they name one."""
        for row in rows:
            metrics.dead_letter_counter(row["stage"]).inc()
            if row.get("model"):
                metrics.counter(MODEL_DEAD_LETTERS_PREFIX + row["model"]).inc()

    def predictions(self, n: int) -> None:
        """n prediction rows (or PredictionLogs) went to the sink."""
        if n:
            self._predictions.inc(n)
            metrics.PROGRESS.add(metrics.PREDICTIONS_WRITTEN, n)

    def model_outputs(self, counts: Mapping[str, int]) -> None:
        """{model name: records it has outputs for} of one scored chunk."""
        for name, n in counts.items():
            metrics.counter(MODEL_OUTPUTS_PREFIX + name).inc(n)

    def model_calls(self, calls: Sequence[Tuple[str, int, float, bool]]) -> None:
        """(model name, batch size, seconds, succeeded) of each model call made for one chunk."""
        for model, size, seconds, succeeded in calls:
            if succeeded:
                self._inferences.inc(size)
                self._batch_size.update(size)
                self._latency.update(int(seconds * 1e6))
                metrics.distribution(model_metric_name(BATCH_SIZE, model)).update(size)
                metrics.distribution(model_metric_name(BATCH_LATENCY_US, model)).update(int(seconds * 1e6))
            else:
                self._failed_batches.inc()

    def models_loaded(self, loads: Sequence[Tuple[str, float, int]]) -> None:
        """(model name, seconds, bytes on disk) of each model load this process made
        (engines.take_load_times)."""
        for model, seconds, size in loads:
            metrics.distribution(LOAD_LATENCY_MS).update(int(seconds * 1e3))
            metrics.distribution(model_metric_name(LOAD_LATENCY_MS, model)).update(int(seconds * 1e3))
            metrics.distribution(MODEL_BYTES).update(size)
            metrics.distribution(model_metric_name(MODEL_BYTES, model)).update(size)
            metrics.counter(MODELS_LOADED).inc()

    def publish_to_result(self, published_at: Iterable[Optional[float]]) -> None:
        """Streams: the latency from each message's Pub/Sub publish time to its result (epoch seconds)."""
        now, latency = time.time(), metrics.distribution(PUBLISH_TO_RESULT_MS)
        for t in published_at:
            if t is not None:
                latency.update(max(int((now - t) * 1e3), 0))

    def scored_in_this_process(self) -> None:
        """This process scored records: which worker processes did the work, however many."""
        metrics.string_set(SCORING_PROCESSES).add(_PROCESS)

    def refused_prediction(self, dead_letter: Mapping) -> None:
        """A row the sink refused after it was counted: no longer a prediction, now a dead letter."""
        self._predictions.dec()
        self.dead_letters([dead_letter])

    def refused_dead_letter(self) -> None:
        """A dead letter its own sink refused (logged in full by the caller)."""
        metrics.counter(REFUSED_DEAD_LETTERS).inc()

    def model_refreshes(self, events) -> None:
        """Refresh events (transforms.scoring.refresh.RefreshEvent): versions swapped in or refused."""
        for event in events:
            if event.loaded:
                metrics.counter(MODEL_REFRESHES).inc()
                metrics.distribution(MODEL_REFRESH_MS).update(int(event.seconds * 1e3))
            else:
                metrics.counter(MODEL_REFRESH_FAILURES).inc()

    def duplicate_keys(self, n: int) -> None:
        """n records carry a key that another record of the job carries too."""
        metrics.counter(DUPLICATE_KEYS).inc(n)

    def stream_batch(self, n: int) -> None:
        metrics.distribution(metrics.STREAM_BATCH_SIZE).update(n)


_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


class AccountedDoFn(beam.DoFn):
    """A DoFn that reports to its own Accounting, made in setup() on the worker.

    reject() and emit_predictions() are the only ways a record leaves a stage as a dead letter or
    a prediction: each counts what it emits, so no stage can emit one without counting it
    (tests/test_structure.py keeps every other module from tagging dead letters)."""

    _accounting: Accounting

    def setup(self):
        self._accounting = Accounting()

    def reject(self, rows: Iterable[Mapping[str, Any]],
               as_element: Optional[Callable[[Mapping[str, Any]], Any]] = None) -> Iterator[beam.pvalue.TaggedOutput]:
        """Counts dead-letter rows and yields each on the dead-letter output (as_element(row):
        what the dead-letter output carries, when it is not the row itself)."""
        rows = list(rows)
        self._accounting.dead_letters(rows)
        for row in rows:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row if as_element is None else as_element(row))

    def emit_predictions(self, elements: Iterable[Any], predictions: int) -> Iterator[Any]:
        """Counts `predictions` records as scored and yields the elements that hold them."""
        self._accounting.predictions(predictions)
        yield from elements
