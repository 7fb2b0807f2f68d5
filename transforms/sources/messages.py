"""Pub/Sub request messages -> stream records. Pure.

A request message holds one instance: a serialized tf.Example (payload format `example`) or a
JSON object of features converted by the model's feature spec (`json`,
transforms.sources.instances). Its key is a message attribute (--key_attribute) or else the
message id. The answers go out through transforms.sinks.messages.
"""

import hashlib
from typing import Dict, Mapping, NamedTuple, Optional, Sequence

import orjson

from models.serving.feature_spec import Feature
from transforms.sources.instances import as_conversion_error, instance_to_example

EXAMPLE, JSON = "example", "json"
PAYLOAD_FORMATS = (EXAMPLE, JSON)


class StreamRecord(NamedTuple):
    message_id: str  # unique per message: how results and dead letters find their message
    key: str  # the caller's key (attribute) or the message id
    example: bytes  # the serialized tf.Example the models see
    payload: bytes  # the message as received, for its dead letter
    attributes: Dict[str, str]
    published_at: Optional[float] = None  # Pub/Sub's publish time, epoch seconds (for latency)


def epoch_seconds_of(publish_time) -> Optional[float]:
    """A Pub/Sub message's publish time (a datetime, or a protobuf Timestamp) as epoch seconds."""
    if publish_time is None:
        return None
    try:
        if hasattr(publish_time, "timestamp"):
            return float(publish_time.timestamp())
        return publish_time.seconds + publish_time.nanos / 1e9
    except Exception:  # pylint: disable=broad-except  # no latency for it, nothing else
        return None


class MessageError(ValueError):
    """A message that is not a request: stage read (too large), decode (not JSON) or convert."""

    def __init__(self, stage: str, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.stage = stage
        self.key = key


def message_id_of(message_id: Optional[str], payload: bytes, attributes: Mapping[str, str]) -> str:
    """The message id; where a runner gives none, a digest of the message (stable on redelivery)."""
    if message_id:
        return str(message_id)
    digest = hashlib.sha256(payload + orjson.dumps(dict(attributes), option=orjson.OPT_SORT_KEYS))
    return "sha256:" + digest.hexdigest()[:32]


def payload_to_example(payload: bytes, payload_format: str, spec: Sequence[Feature]) -> bytes:
    """The tf.Example bytes of a payload; raises MessageError. Example payloads pass as they are
    (the scoring stage validates them and dead-letters what does not parse)."""
    if payload_format == EXAMPLE:
        return payload
    try:
        instance = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise MessageError("decode", f"payload is not JSON ({e})") from e
    if not isinstance(instance, dict):
        raise MessageError("decode", f"payload is a JSON {type(instance).__name__}, expected an object of features")
    try:
        return instance_to_example(instance, spec, keep_extra=True)
    except Exception as e:  # pylint: disable=broad-except  # any failure is this message's dead letter
        raise MessageError("convert", str(as_conversion_error(e))) from e


def message_to_record(payload: bytes, attributes: Optional[Mapping[str, str]], message_id: str,
                      spec: Sequence[Feature], payload_format: str = EXAMPLE,
                      key_attribute: Optional[str] = None,
                      max_payload_bytes: Optional[int] = None) -> StreamRecord:
    """One request message as a StreamRecord; raises MessageError (with the key when known)."""
    attributes = dict(attributes or {})
    key = message_id
    if key_attribute:
        if not attributes.get(key_attribute):
            raise MessageError("convert", f"the message has no {key_attribute!r} attribute (the key)")
        key = attributes[key_attribute]
    if max_payload_bytes and len(payload) > max_payload_bytes:
        raise MessageError("read", f"payload of {len(payload):,} bytes is over --max_payload_bytes "
                                   f"{max_payload_bytes:,}", key)
    try:
        example = payload_to_example(payload, payload_format, spec)
    except MessageError as e:
        e.key = key
        raise
    return StreamRecord(message_id, key, example, payload, attributes)
