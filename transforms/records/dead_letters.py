"""Dead-letter rows: the one place a rejected record is described (DESIGN.md, data model)."""

import base64
from typing import Any, Dict, Optional

DEAD_LETTER_TAG = "dead_letters"

READ, DECODE, CONVERT, VALIDATE, INFER, POSTPROCESS, WRITE = (
    "read", "decode", "convert", "validate", "infer", "postprocess", "write")
STAGES = (READ, DECODE, CONVERT, VALIDATE, INFER, POSTPROCESS, WRITE)

MAX_MESSAGE_CHARS = 2000


def dead_letter(stage: str, error: Any, key: Optional[str] = None, raw: Optional[bytes] = None,
                source: Optional[str] = None, model: Optional[str] = None,
                error_type: Optional[str] = None) -> Dict[str, Any]:
    """A JSON-ready dead-letter row.

    error is an exception or a message; raw is the record's bytes (base64 in the row); source says
    where the record came from (file and offset, table, message id) when the key does not.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown dead-letter stage {stage!r}")
    if isinstance(error, BaseException):
        error_type, message = error_type or type(error).__name__, str(error)
    else:
        error_type, message = error_type or "Error", str(error)
    row = {
        "key": key,
        "stage": stage,
        "error_type": error_type,
        "error": message[:MAX_MESSAGE_CHARS],
        "input_base64": base64.b64encode(raw).decode("ascii") if raw is not None else None,
    }
    if source is not None:
        row["source"] = source
    if model is not None:
        row["model"] = model
    return row


_TF_NOISE = ("Graph execution error:", "Detected at node", "<stack traces unavailable>")


def error_text(error: BaseException) -> str:
    """One line of what went wrong; TensorFlow's own messages without their stack-trace preamble."""
    message = getattr(error, "message", None) or str(error) or repr(error)
    return clean_message(message)


def clean_message(message: str) -> str:
    lines = [line for line in message.splitlines() if not line.strip().startswith(_TF_NOISE)]
    return " ".join(" ".join(lines).split())


def model_failure_dead_letter(error: Any, key: str, raw: bytes, spec, model: str,
                              error_type: Optional[str] = None) -> Dict[str, Any]:
    """A record the model failed on alone: a decode dead letter when TensorFlow's own parser
    rejects it (bytes Python's protobuf let through), else an infer dead letter."""
    from models.export import parse_error

    parse_message = parse_error(raw, spec)
    if parse_message is not None:
        return dead_letter(DECODE, f"not a tf.Example TensorFlow can parse: {parse_message}",
                           key=key, raw=raw, source=key, error_type="RecordError")
    message = error_text(error) if isinstance(error, BaseException) else clean_message(str(error))
    return dead_letter(INFER, message, key=key, raw=raw, model=model,
                       error_type=error_type or type(error).__name__)
