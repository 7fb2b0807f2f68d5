"""Dead-letter rows: the one place a rejected record is described. Pure.

Every dead letter has the same fields, in this order:
    key          the record's key when known: the key feature / key column / key attribute value,
                 else the position key (file:index, file:line, message id)
    stage        read, decode, convert, validate, infer, postprocess or write
    error_type   the exception's class name (or a name given for the failure)
    error        one line: what went wrong
    input_base64 the raw input (the record's bytes, the JSON/CSV line, the table row as JSON), at
                 most its first MAX_INPUT_BYTES (64 KiB): a dead letter never holds a whole
                 oversized or hostile record
    input_size   the whole input's length in bytes (more than input_base64 holds when it was cut)
    input_sha256 the SHA-256 (hex) of the whole input, so a cut input can still be matched
    source       where the record came from: {"file", "record"}, {"file", "offset"} (a corrupt
                 region), {"file", "line"}, {"table"} or {"query"}, {"message_id"}; None only for
                 records handed to the keyed API without one
    model        the model a model stage (validate, convert, infer, postprocess) failed in
"""

import base64
import hashlib
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

from models.serving.errors import clean_message, error_text  # noqa: F401  (error_text re-exported)
from transforms.runtime.redaction import redact_text, redact_values

DEAD_LETTER_TAG = "dead_letters"

READ, DECODE, CONVERT, VALIDATE, INFER, POSTPROCESS, WRITE = (
    "read", "decode", "convert", "validate", "infer", "postprocess", "write")
STAGES = (READ, DECODE, CONVERT, VALIDATE, INFER, POSTPROCESS, WRITE)
FIELDS = ("key", "stage", "error_type", "error", "input_base64", "input_size", "input_sha256", "source", "model")

MAX_MESSAGE_CHARS = 2000
MAX_INPUT_BYTES = 64 << 10  # of a dead letter's input, kept in input_base64


class WithDeadLetters(NamedTuple):
    """What every transform that can reject a record returns: its main output and the dead
    letters of the records it rejected (unpacks as a pair)."""
    main: Any
    dead_letters: Any


class InputHead(NamedTuple):
    """The first bytes of an input too large to hold whole (a record over the reader's cap, skipped
    unread), with what is known of the whole: its length, and its SHA-256 when it was hashed."""
    head: bytes
    size: int
    sha256: Optional[str] = None


def input_fields(raw: Union[bytes, InputHead, None]) -> Dict[str, Any]:
    """input_base64 (at most MAX_INPUT_BYTES of the input), input_size and input_sha256 of raw."""
    if raw is None:
        return {"input_base64": None, "input_size": None, "input_sha256": None}
    if isinstance(raw, InputHead):
        head, size, sha256 = raw.head[:MAX_INPUT_BYTES], raw.size, raw.sha256
    else:
        head, size, sha256 = raw[:MAX_INPUT_BYTES], len(raw), hashlib.sha256(raw).hexdigest()
    return {"input_base64": base64.b64encode(head).decode("ascii"), "input_size": size, "input_sha256": sha256}


def dead_letter(stage: str, error: Any, key: Optional[str] = None, raw: Union[bytes, InputHead, None] = None,
                source: Optional[Mapping[str, Any]] = None, model: Optional[str] = None,
                error_type: Optional[str] = None) -> Dict[str, Any]:
    """A JSON-ready dead-letter row (FIELDS above); error is an exception or a message; raw is the
    input (bytes, of which the row keeps a bounded head) or an InputHead. Secrets in the error and
    the source (a path's ?sig=, a URL's password) are hidden."""
    if stage not in STAGES:
        raise ValueError(f"unknown dead-letter stage {stage!r}")
    if isinstance(error, BaseException):
        error_type, message = error_type or type(error).__name__, error_text(error)
    else:
        error_type, message = error_type or "Error", clean_message(str(error))
    return {
        "key": key,
        "stage": stage,
        "error_type": error_type,
        "error": redact_text(message[:2 * MAX_MESSAGE_CHARS])[:MAX_MESSAGE_CHARS],
        **input_fields(raw),
        "source": redact_values(dict(source)) if source is not None else None,
        "model": model,
    }


def model_failure_dead_letter(error: BaseException, key: str, raw: bytes, spec, model: str,
                              source: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A record a model failed on by itself: a decode dead letter when TensorFlow's own parser
    rejects it (bytes Python's protobuf let through), else an infer dead letter."""
    from models.serving.examples import parse_error

    parse_message = parse_error(raw, spec)
    if parse_message is not None:
        return dead_letter(DECODE, f"not a tf.Example TensorFlow can parse: {parse_message}",
                           key=key, raw=raw, source=source, model=model, error_type="RecordError")
    return dead_letter(INFER, error, key=key, raw=raw, source=source, model=model)
