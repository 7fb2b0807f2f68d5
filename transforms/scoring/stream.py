"""ScoreMessages: Pub/Sub messages -> prediction rows and dead letters, in latency-bounded batches.

    messages -> MessagesToRecordsFn (key, size check, JSON -> tf.Example)          -> dead letters
             -> BatchRecords (GroupIntoBatches.WithShardedKey: size or latency)
             -> ScoreMessageBatchFn (the scoring core on the batch, not pipelined)  -> Predictions
                                                                                    -> dead letters

Inside a batch, records are keyed by message id, which is unique, so every row and dead letter
finds its message: rows get the caller's key back, and dead letters carry the original payload
and attributes (DeadLetter elements). Every message read ends as exactly one of the two.
"""

import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import apache_beam as beam

from models.feature_spec import Feature
from transforms.graph.model import ModelGraph
from transforms.records.chunk import RecordChunk
from transforms.records.dead_letters import DEAD_LETTER_TAG, WithDeadLetters
from transforms.records.rows import KEY_FIELD, MODEL_VERSIONS_FIELD, rows_from_block
from transforms.runtime.gpu import GpuSettings
from transforms.scoring.beam import ScoreChunksFn, format_rows, unformattable_dead_letters
from transforms.scoring.engines import batch_calls
from transforms.scoring.refresh import RefreshSettings, shared_refresher
from transforms.sources.messages import EXAMPLE, StreamRecord
from transforms.sources.pubsub import BatchRecords, DeadLetter, MessagesToRecordsFn


class Prediction(NamedTuple):
    row: Dict[str, Any]  # the prediction row, keyed by the caller's key
    message_id: str


class ScoreMessageBatchFn(ScoreChunksFn):
    """(shard, [StreamRecord]) -> Predictions, and DeadLetters for what a model could not score.

    With refresh on, new model versions are swapped in between batches (transforms.scoring.refresh),
    and each row says under MODEL_VERSIONS_FIELD which version of each of its models scored it."""

    def __init__(self, graph: ModelGraph, with_source: bool = False, gpu: Optional[GpuSettings] = None,
                 refresh: RefreshSettings = RefreshSettings()):
        super().__init__(graph, gpu=gpu, pipelined=False)
        self._with_source = with_source
        self._scalars = graph.passthrough_scalars()
        self._refresh = refresh
        self._refresher = None
        self._generation = 0

    def setup(self):
        if self._refresh.on:  # start from the process's current versions, not those of launch
            self._refresher = shared_refresher(self._graph, self._keep_logs)
            self._generation, self._graph = self._refresher.current()
            self._refresher.start(self._refresh)
        super().setup()

    def process(self, sharded_batch):  # pylint: disable=arguments-differ
        _, batch = sharded_batch
        versions = None
        if self._refresher is not None:
            generation, graph = self._refresher.current()
            if generation != self._generation:  # between batches: a batch is scored by one version
                self._generation, self._graph = generation, graph
                self._calls = batch_calls(graph, self._keep_logs)
            self._accounting.model_refreshes(self._refresher.take_events())
            versions = {n.name: n.model.version_name for n in self._graph.nodes}
        self._accounting.stream_batch(len(batch))
        records: Dict[str, StreamRecord] = {r.message_id: r for r in batch}
        chunk = RecordChunk(list(records), [r.example for r in records.values()],
                            [{"message_id": m} for m in records])
        scored, log = self.score(chunk)
        self.account(scored, log)
        self._accounting.publish_to_result(r.published_at for r in records.values())
        yield from self._dead_letters(scored.dead, records)
        try:
            text, count = format_rows(self._graph, scored, with_source=self._with_source, scalars=self._scalars)
        except Exception as e:  # pylint: disable=broad-except  # each message is accounted for
            dead = unformattable_dead_letters(scored, e)
            self._accounting.dead_letters(dead)
            yield from self._dead_letters(dead, records)
            return
        self._accounting.predictions(count)
        for row in rows_from_block(text, count):
            record = records[row[KEY_FIELD]]
            row[KEY_FIELD] = record.key
            if versions is not None:
                row[MODEL_VERSIONS_FIELD] = {name: version for name, version in versions.items() if name in row}
            yield Prediction(row, record.message_id)

    @staticmethod
    def _dead_letters(rows, records: Dict[str, StreamRecord]):
        for row in rows:
            record = records[row["key"]]
            row["key"] = record.key
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                row, record.payload, record.attributes, record.message_id))


class ScoreMessages(beam.PTransform):
    """PubsubMessages (with attributes) -> WithDeadLetters(Predictions, DeadLetters)."""

    def __init__(self, graph: ModelGraph, spec: Sequence[Feature], payload_format: str = EXAMPLE,
                 key_attribute: Optional[str] = None, max_payload_bytes: Optional[int] = None,
                 max_batch_size: int = 256, max_batch_latency_s: float = 0.1, with_source: bool = False,
                 clock: Callable[[], float] = time.time, gpu: Optional[GpuSettings] = None,
                 refresh: RefreshSettings = RefreshSettings()):
        """clock: what GroupIntoBatches sets its processing-time timers from (tests: a fake);
        gpu: applied on workers before the models load; refresh: how new model versions are
        found (transforms.scoring.refresh; default: never)."""
        super().__init__()
        self._refresh = refresh
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
                      ScoreMessageBatchFn(self._graph, self._with_source, self._gpu, self._refresh)).with_outputs(
                      DEAD_LETTER_TAG, main="rows"))
        dead = (records[DEAD_LETTER_TAG], scored[DEAD_LETTER_TAG]) | "DeadLetters" >> beam.Flatten()
        return WithDeadLetters(scored.rows, dead)
