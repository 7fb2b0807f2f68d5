"""Pub/Sub messages -> stream records (+ dead letters), and latency-bounded batches of them.

MessagesToRecordsFn turns each PubsubMessage into a StreamRecord (transforms.sources.messages) or
a dead letter (read: too large; decode: not JSON; convert: features that do not fit, no key
attribute). BatchRecords closes a batch when it holds max_batch_size records or when its first
record has waited max_batch_latency_s, so a trickle is not held back and a burst is still
batched (Beam's GroupIntoBatches: state and a processing-time timer per shard; Dataflow shards
the key itself).
"""

import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import apache_beam as beam

from models.serving.feature_spec import Feature
from transforms.records.dead_letters import dead_letter
from transforms.runtime.accounting import AccountedDoFn
from transforms.sources.messages import (EXAMPLE, MessageError, epoch_seconds_of, message_id_of,
                                         message_to_record)


class DeadLetter(NamedTuple):
    """A stream's dead letter: the row, and what its dead-letter message needs besides."""
    row: Dict[str, Any]  # the dead-letter row (transforms.records.dead_letters)
    payload: bytes  # the message as received
    attributes: Dict[str, str]
    message_id: str


class MessagesToRecordsFn(AccountedDoFn):
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
        self._accounting.read(1)
        try:
            record = message_to_record(payload, attributes, message_id, self._spec, self._payload_format,
                                       self._key_attribute, self._max_payload_bytes)
            yield record._replace(published_at=epoch_seconds_of(getattr(message, "publish_time", None)))
        except Exception as e:  # pylint: disable=broad-except  # no message may stop the stream
            error = e if isinstance(e, MessageError) else MessageError("convert", f"{type(e).__name__}: {e}")
            row = dead_letter(error.stage, error, key=error.key, raw=payload, source={"message_id": message_id})
            yield from self.reject([row], lambda r: DeadLetter(r, payload, attributes, message_id))


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
