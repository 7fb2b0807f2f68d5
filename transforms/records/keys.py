"""A record's key: the position key its source gave it, or the value of a key feature. Pure."""

from typing import List, Optional, Sequence

from models.examples import RecordError, feature_values


def keys_by_feature(records: Sequence[bytes], key_feature: str) -> Optional[List[str]]:
    """All keys in one vectorised parse, or None when any record needs the per-record path."""
    import tensorflow as tf

    for dtype in (tf.string, tf.int64):
        try:
            values = tf.io.parse_example(
                tf.constant(list(records), tf.string),
                {key_feature: tf.io.FixedLenFeature([], dtype)})[key_feature].numpy()
        except (tf.errors.InvalidArgumentError, ValueError):
            continue
        if dtype == tf.int64:
            return [str(v) for v in values.tolist()]
        try:
            return [v.decode("utf-8") for v in values.tolist()]
        except UnicodeDecodeError:
            return None
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
