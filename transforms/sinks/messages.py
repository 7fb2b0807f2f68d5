"""Prediction and dead-letter messages for Pub/Sub. Pure.

A prediction message carries the prediction row as JSON and the key as an attribute, so callers
match results to requests. A dead-letter message carries the original payload and attributes
unchanged, plus attributes that say why (error_stage, error_type, error, key, message_id, model).
"""

from typing import Any, Dict, Mapping, Tuple

import orjson

KEY_ATTRIBUTE, MESSAGE_ID_ATTRIBUTE = "key", "message_id"
# Pub/Sub limits an attribute value to 1024 bytes; error texts are cut to fit.
MAX_ATTRIBUTE_BYTES = 1024


def _fit_attribute(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= MAX_ATTRIBUTE_BYTES:
        return text
    return data[:MAX_ATTRIBUTE_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def dead_letter_message(row: Mapping[str, Any], payload: bytes, attributes: Mapping[str, str],
                        message_id: str) -> Tuple[bytes, Dict[str, str]]:
    """(data, attributes) of a dead-letter message: the original payload and attributes, and
    error_stage, error_type, error (cut to Pub/Sub's attribute limit), key, message_id, model."""
    out = dict(attributes)
    out.update({"error_stage": row["stage"], "error_type": str(row.get("error_type")),
                "error": _fit_attribute(str(row.get("error"))), MESSAGE_ID_ATTRIBUTE: message_id})
    if row.get("key") is not None:
        out[KEY_ATTRIBUTE] = _fit_attribute(str(row["key"]))
    if row.get("model"):
        out["model"] = str(row["model"])
    return payload, out


def prediction_message(row: Mapping[str, Any], message_id: str) -> Tuple[bytes, Dict[str, str]]:
    """(data, attributes) of a prediction: the row as JSON; the key and message id as attributes."""
    return orjson.dumps(row), {KEY_ATTRIBUTE: _fit_attribute(str(row["key"])), MESSAGE_ID_ATTRIBUTE: message_id}
