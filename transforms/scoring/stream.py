"""ScoreMessages: Pub/Sub messages -> prediction rows and dead letters, in latency-bounded batches.

    messages -> MessagesToRecordsFn (key, size check, JSON -> tf.Example)          -> dead letters
             -> BatchRecords (GroupIntoBatches.WithShardedKey: size or latency)
             -> MessagesToChunkFn (a RecordChunk keyed by message id)
             -> ScoreChunks (the batch job's scoring step, not pipelined; models from a
                provider: as launched, or refreshed)                               -> dead letters
             -> FormatMessagesFn (the one format-or-dead-letter step)  -> Predictions
                                                                        -> dead letters

Inside a chunk, records are keyed by message id, which is unique, so every row and dead letter
finds its message (the chunk's sources hold the messages, MessageSources): rows get the caller's
key back, and dead letters carry the original payload and attributes (DeadLetter elements).
Every message read ends as exactly one of the two.
"""

import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam

from models.serving.feature_spec import Feature
from transforms.graph.model import ModelGraph
from transforms.records.chunk import RecordChunk, ScoredChunk
from transforms.records.dead_letters import DEAD_LETTER_TAG, WithDeadLetters
from transforms.records.rows import KEY_FIELD, MODEL_VERSIONS_FIELD, rows_from_block
from transforms.runtime.accounting import AccountedDoFn
from transforms.runtime.gpu import GpuSettings
from transforms.scoring.beam import ScoreChunks
from transforms.scoring.providers import model_provider
from transforms.scoring.refresh import RefreshSettings
from transforms.scoring.timeouts import DEFAULT_MODEL_TIMEOUT_S
from transforms.sinks.format import FormatChunkFn, format_chunks, format_rows
from transforms.sources.messages import EXAMPLE, StreamRecord
from transforms.sources.pubsub import BatchRecords, DeadLetter, MessagesToRecordsFn


class Prediction(NamedTuple):
    row: Dict[str, Any]  # the prediction row, keyed by the caller's key
    message_id: str


class MessageSources(Sequence):
    """A chunk's sources as rows show them ({"message_id"} each), holding the messages' StreamRecords."""

    def __init__(self, records: Iterable[StreamRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return {"message_id": self.records[i].message_id}

    def by_message_id(self) -> Dict[str, StreamRecord]:
        return {r.message_id: r for r in self.records}


def messages_to_chunk(batch: Sequence[StreamRecord]) -> RecordChunk:
    """A batch of records as one chunk keyed by message id (a message redelivered into the same
    batch is scored once)."""
    records = list({r.message_id: r for r in batch}.values())
    return RecordChunk([r.message_id for r in records], [r.example for r in records], MessageSources(records))


def message_dead_letter(row: Dict[str, Any], sources: MessageSources) -> DeadLetter:
    """A chunk's dead-letter row (keyed by message id) as its message's DeadLetter, with the caller's key."""
    record = sources.by_message_id()[row["key"]]
    return DeadLetter(dict(row, key=record.key), record.payload, record.attributes, record.message_id)


class MessagesToChunkFn(AccountedDoFn):
    """(shard, [StreamRecord]) -> one RecordChunk (messages_to_chunk)."""

    def process(self, sharded_batch):
        _, batch = sharded_batch
        self._accounting.stream_batch(len(batch))
        yield messages_to_chunk(batch)


class FormatMessagesFn(FormatChunkFn):
    """ScoredChunk of messages -> a Prediction per row, with the caller's key and, where models
    are refreshed, the version of each model that scored it (MODEL_VERSIONS_FIELD)."""

    def __init__(self, graph: ModelGraph, with_source: bool = False):
        self._graph = graph
        self._with_source = with_source
        self._scalars = graph.passthrough_scalars()

    def format(self, scored: ScoredChunk) -> Tuple[List[Prediction], int]:
        text, count = format_rows(self._graph, scored, with_source=self._with_source, scalars=self._scalars)
        records = scored.sources.by_message_id()
        self._accounting.publish_to_result(r.published_at for r in records.values())
        predictions = []
        for row in rows_from_block(text, count):
            record = records[row[KEY_FIELD]]
            row[KEY_FIELD] = record.key
            if scored.versions is not None:
                row[MODEL_VERSIONS_FIELD] = {name: v for name, v in scored.versions.items() if name in row}
            predictions.append(Prediction(row, record.message_id))
        return predictions, count

    def dead_letter_element(self, row: Dict[str, Any], scored: ScoredChunk) -> DeadLetter:
        return message_dead_letter(row, scored.sources)


class ScoreMessages(beam.PTransform):
    """PubsubMessages (with attributes) -> WithDeadLetters(Predictions, DeadLetters)."""

    def __init__(self, graph: ModelGraph, spec: Sequence[Feature], payload_format: str = EXAMPLE,
                 key_attribute: Optional[str] = None, max_payload_bytes: Optional[int] = None,
                 max_batch_size: int = 256, max_batch_latency_s: float = 0.1, with_source: bool = False,
                 clock: Callable[[], float] = time.time, gpu: Optional[GpuSettings] = None,
                 refresh: RefreshSettings = RefreshSettings(),
                 model_timeout_s: Optional[float] = DEFAULT_MODEL_TIMEOUT_S, op_libraries: Sequence[str] = ()):
        """clock: what GroupIntoBatches sets its processing-time timers from (tests: a fake);
        gpu: applied on workers before the models load; refresh: how new model versions are
        found (transforms.scoring.refresh; default: never); model_timeout_s: the longest a model
        call may take (transforms.scoring.timeouts; None or 0: no limit); op_libraries: the
        --op_library modules workers import before the models load."""
        super().__init__()
        self._op_libraries = tuple(op_libraries)
        self._model_timeout_s = model_timeout_s
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
        chunks = (records.records
                  | "Batch" >> BatchRecords(self._max_batch_size, self._max_batch_latency_s, self._clock)
                  | "ToChunks" >> beam.ParDo(MessagesToChunkFn()))
        scored, unscored = chunks | f"ScoreBatches[{'+'.join(self._graph.names)}]" >> ScoreChunks(
            self._graph, gpu=self._gpu, pipelined=False, models=model_provider(self._graph, refresh=self._refresh),
            dead_letter_element=message_dead_letter, model_timeout_s=self._model_timeout_s,
            op_libraries=self._op_libraries)
        predictions, unformatted = format_chunks(
            scored, "ToPredictions", FormatMessagesFn(self._graph, self._with_source))
        dead = (records[DEAD_LETTER_TAG], unscored, unformatted) | "DeadLetters" >> beam.Flatten()
        return WithDeadLetters(predictions, dead)
