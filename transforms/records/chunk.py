"""Chunks: a batch of records as one pipeline element, so Beam's per-element cost is paid per batch.

score_chunk is the whole per-chunk logic, pure given the model call: it keeps keys aligned with
outputs and gives every record that cannot be scored a dead letter, with the same stages and
messages as the per-record path (ValidateRecords, then isolation of model failures).
"""

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from models.examples import RecordError
from models.feature_spec import Feature
from transforms.records.dead_letters import model_failure_dead_letter
from transforms.scoring.fast_engine import concat_parts, isolate_failures
from transforms.validate import checked_key, record_dead_letter


class RecordChunk(NamedTuple):
    keys: List[str]
    records: List[bytes]
    # with --with_source: where each record came from ({"file", "record" | "line"}, {"table"}, ...)
    sources: Optional[List[dict]] = None


class ScoredChunk(NamedTuple):
    keys: List[str]
    records: List[bytes]  # kept for PredictionLog output, which echoes inputs
    outputs: Dict[str, np.ndarray]  # each [len(keys), ...]


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


def score_chunk(call: Callable[[Sequence[bytes]], Dict[str, np.ndarray]], chunk: RecordChunk,
                spec: Sequence[Feature], model_name: str, key_feature: Optional[str] = None
                ) -> Tuple[Optional[ScoredChunk], List[Dict[str, Any]]]:
    """Scores a chunk: one model call when every record is good; otherwise per-record validation,
    then halving to isolate records the model itself rejects."""
    keys, records = chunk.keys, chunk.records
    if key_feature:
        final_keys = keys_by_feature(records, key_feature)
    else:
        final_keys = list(keys)
    if final_keys is not None:
        try:
            return ScoredChunk(final_keys, list(records), call(records)), []
        except Exception:  # pylint: disable=broad-except  # sorted out record by record below
            pass
    dead: List[Dict[str, Any]] = []
    valid, valid_keys = [], {}
    for i, (key, record) in enumerate(zip(keys, records)):
        try:
            valid_keys[i] = checked_key(key, record, spec, key_feature)
            valid.append(i)
        except RecordError as e:
            dead.append(record_dead_letter(e, key, record))
    parts, failures = isolate_failures(lambda indices: call([records[i] for i in indices]), valid)
    for index, error in failures:
        dead.append(model_failure_dead_letter(error, valid_keys[index], records[index], spec, model_name))
    indices, outputs = concat_parts(parts)
    if not indices:
        return None, dead
    return ScoredChunk([valid_keys[i] for i in indices], [records[i] for i in indices], outputs), dead
