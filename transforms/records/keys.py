"""A record's key: the position key its source gave it, or the value of a key feature. Pure."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from models.serving.examples import RecordError, feature_values
from transforms.records.serialized import string_tensor


_KEY_PARSERS: Dict[Tuple[str, str], Any] = {}


def _key_parser(key_feature: str, dtype: str):
    """A traced parse of one scalar feature over a batch (graph mode: no per-call Python in TF)."""
    parser = _KEY_PARSERS.get((key_feature, dtype))
    if parser is None:
        import tensorflow as tf

        spec = {key_feature: tf.io.FixedLenFeature([], tf.as_dtype(dtype))}
        parser = tf.function(lambda records: tf.io.parse_example(records, spec)[key_feature],
                             input_signature=[tf.TensorSpec([None], tf.string)])
        _KEY_PARSERS[(key_feature, dtype)] = parser
    return parser


def texts(values: List[bytes]) -> Optional[List[str]]:
    """UTF-8 byte strings -> str, in one decode when none holds a NUL; None if any is not UTF-8."""
    joined = b"\0".join(values)
    try:
        text = joined.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split("\0")
    return parts if len(parts) == len(values) else [v.decode("utf-8") for v in values]


def keys_by_feature(records: Sequence[bytes], key_feature: str) -> Optional[List[str]]:
    """All keys in one parse of the chunk's tensor, or None when any record needs the per-record
    path (not a tf.Example, no key, several values, a float key, or a key that is not UTF-8)."""
    import tensorflow as tf

    if not len(records):
        return []
    tensor = string_tensor(records)
    for dtype in ("string", "int64"):
        try:
            values = _key_parser(key_feature, dtype)(tensor).numpy()
        except (tf.errors.InvalidArgumentError, ValueError):
            continue
        if dtype == "int64":
            return [str(v) for v in values.tolist()]
        return texts(values.tolist())
    return None


def key_from_feature(example, key_feature: str) -> str:
    """The key held by a parsed tf.Example's key feature (bytes or int64, exactly one value)."""
    values = feature_values(example, key_feature)
    if len(values) != 1:
        raise RecordError("validate", f"key feature {key_feature!r} has {len(values)} values, expected 1")
    value = values[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("validate", f"key feature {key_feature!r} is not UTF-8 text")
    if isinstance(value, float):
        raise RecordError("validate", f"key feature {key_feature!r} is a float; use a string or int64")
    return str(value)
