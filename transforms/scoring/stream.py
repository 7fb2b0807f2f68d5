"""ScoreMessages: Pub/Sub messages -> prediction rows and dead letters, in latency-bounded batches.

    messages -> MessagesToRecordsFn (key, size check, JSON -> tf.Example)       -> dead letters
             -> GroupIntoBatches.WithShardedKey(max_batch_size, max_batch_latency)
             -> ScoreMessageBatchFn (the graph on the batch: transforms.scoring.executor) -> rows
                                                                                 -> dead letters

A batch closes when it holds max_batch_size messages or when its first message has waited
max_batch_latency_s, so a trickle is not held back and a burst is still batched (Beam's
GroupIntoBatches: state and a processing-time timer per shard; Dataflow shards the key itself).
Inside a batch, records are keyed by message id, which is unique, so every row and dead letter
finds its message: rows get the caller's key back, and dead letters carry the original payload
and attributes (DeadLetter elements). Every message read ends as exactly one of the two.
"""

import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import apache_beam as beam

from models.feature_spec import Feature
from transforms.runtime import metrics
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, dead_letter
from transforms.runtime.gpu import GpuSettings
from transforms.graph.model import ModelGraph
from transforms.scoring.executor import score_graph_chunk
from transforms.records.graph_rows import rows_from_lines, rows_text
from transforms.scoring.model_graph import count_model_dead_letter, count_model_outputs, passthrough_scalars, shared_batch_call
from transforms.sources.pubsub import EXAMPLE, MessageError, StreamRecord, message_id_of, message_to_record
from transforms.records.chunk import RecordChunk
from transforms.records.rows import KEY_FIELD

ROWS, DEAD_LETTERS = "rows", "dead_letters"


class DeadLetter(NamedTuple):
    row: Dict[str, Any]  # the dead-letter row (transforms.records.dead_letters)
    payload: bytes  # the message as received
    attributes: Dict[str, str]
    message_id: str


class Prediction(NamedTuple):
    row: Dict[str, Any]  # the prediction row, keyed by the caller's key
    message_id: str


def _dead(stage_row: Dict[str, Any], record_payload: bytes, attributes, message_id: str) -> beam.pvalue.TaggedOutput:
    metrics.dead_letter_counter(stage_row["stage"]).inc()
    return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(stage_row, record_payload, dict(attributes),
                                                                message_id))


class MessagesToRecordsFn(beam.DoFn):
    """PubsubMessage -> StreamRecord, or a DeadLetter (stage read, decode or convert)."""

    def __init__(self, spec: Sequence[Feature], payload_format: str = EXAMPLE,
                 key_attribute: Optional[str] = None, max_payload_bytes: Optional[int] = None):
        self._spec = tuple(spec)
        self._payload_format = payload_format
        self._key_attribute = key_attribute
        self._max_payload_bytes = max_payload_bytes

    def process(self, message):
        payload, attributes = message.data or b"", dict(message.attributes or {})
        message_id = message_id_of(message.message_id, payload, attributes)
        metrics.counter(metrics.RECORDS_READ).inc()
        try:
            yield message_to_record(payload, attributes, message_id, self._spec, self._payload_format,
                                    self._key_attribute, self._max_payload_bytes)
        except MessageError as e:
            yield _dead(dead_letter(e.stage, e, key=e.key, raw=payload, source=message_id),
                        payload, attributes, message_id)


class ScoreMessageBatchFn(beam.DoFn):
    """(shard, [StreamRecord]) -> Predictions, and DeadLetters for what a model could not score."""

    def __init__(self, graph: ModelGraph, with_source: bool = False, gpu: Optional[GpuSettings] = None):
        self._graph = graph
        self._gpu = gpu or GpuSettings()
        self._with_source = with_source
        self._scalars = passthrough_scalars(graph)
        self._calls = None

    def setup(self):
        self._gpu.apply()
        self._calls = {n.name: shared_batch_call(n.engine, n.model.path, n.model.signature)
                       for n in self._graph.nodes}

    def process(self, sharded_batch):
        _, batch = sharded_batch
        metrics.distribution(metrics.STREAM_BATCH_SIZE).update(len(batch))
        records: Dict[str, StreamRecord] = {r.message_id: r for r in batch}
        chunk = RecordChunk(list(records), [r.example for r in records.values()],
                            [{"message_id": m} for m in records] if self._with_source else None)
        score = score_graph_chunk(self._graph, self._calls, chunk)
        for row in score.dead:
            record = records[row["key"]]
            row["key"] = record.key
            count_model_dead_letter(row)
            yield _dead(row, record.payload, record.attributes, record.message_id)
        try:
            rows = rows_from_lines(rows_text(score.keys, score.models, score.records, self._graph.passthrough,
                                             self._scalars, sources=score.sources))
        except Exception as e:  # pylint: disable=broad-except  # each message is accounted for
            for i in score.row_positions():
                record = records[score.keys[i]]
                yield _dead(dead_letter(POSTPROCESS, e, key=record.key, raw=record.payload, source=record.message_id),
                            record.payload, record.attributes, record.message_id)
            return
        count_model_outputs(score)
        for row in rows:
            record = records[row[KEY_FIELD]]
            row[KEY_FIELD] = record.key
            metrics.counter(metrics.PREDICTIONS_WRITTEN).inc()
            yield Prediction(row, record.message_id)


class BatchRecords(beam.PTransform):
    """Records -> (shard, [records]) batches of at most max_batch_size, each closed at the latest
    max_batch_latency_s after its first record (processing time, read from `clock`)."""

    def __init__(self, max_batch_size: int, max_batch_latency_s: float, clock: Callable[[], float] = time.time):
        super().__init__()
        self._max_batch_size = max_batch_size
        self._max_batch_latency_s = max_batch_latency_s
        self._clock = clock

    def expand(self, records):
        return (records
                | "Keyed" >> beam.Map(lambda record: (0, record))
                | "Batch" >> beam.GroupIntoBatches.WithShardedKey(
                    self._max_batch_size, max_buffering_duration_secs=self._max_batch_latency_s, clock=self._clock))


class ScoreMessages(beam.PTransform):
    """PubsubMessages (with attributes) -> {"rows": Predictions, "dead_letters": DeadLetters}."""

    def __init__(self, graph: ModelGraph, spec: Sequence[Feature], payload_format: str = EXAMPLE,
                 key_attribute: Optional[str] = None, max_payload_bytes: Optional[int] = None,
                 max_batch_size: int = 256, max_batch_latency_s: float = 0.1, with_source: bool = False,
                 clock: Callable[[], float] = time.time, gpu: Optional[GpuSettings] = None):
        """clock: what GroupIntoBatches sets its processing-time timers from (tests: a fake);
        gpu: applied on workers before the models load."""
        super().__init__()
        self._gpu = gpu
        self._graph = graph
        self._to_records = MessagesToRecordsFn(spec, payload_format, key_attribute, max_payload_bytes)
        self._max_batch_size = max_batch_size
        self._max_batch_latency_s = max_batch_latency_s
        self._with_source = with_source
        self._clock = clock

    def expand(self, messages):
        records = messages | "ToRecords" >> beam.ParDo(self._to_records).with_outputs(
            DEAD_LETTER_TAG, main="records")
        label = "+".join(self._graph.names)
        scored = (records.records
                  | "Batch" >> BatchRecords(self._max_batch_size, self._max_batch_latency_s, self._clock)
                  | f"ScoreBatches[{label}]" >> beam.ParDo(
                      ScoreMessageBatchFn(self._graph, self._with_source, self._gpu)).with_outputs(
                      DEAD_LETTER_TAG, main="rows"))
        dead = (records[DEAD_LETTER_TAG], scored[DEAD_LETTER_TAG]) | "DeadLetters" >> beam.Flatten()
        return {ROWS: scored.rows, DEAD_LETTERS: dead}
