"""ValidateRecords: keyed records that fit the model's feature spec go on; others become dead letters.

Optionally re-keys each record by a key feature (bytes or int64) taken from the example itself.
"""

from typing import Optional, Sequence

import apache_beam as beam

from models.examples import RecordError, feature_values, validate_example
from models.feature_spec import Feature
from transforms.runtime import metrics
from transforms.records.dead_letters import DEAD_LETTER_TAG, dead_letter


def key_from_feature(example, key_feature: str) -> str:
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


def checked_key(key: str, serialized: bytes, spec: Sequence[Feature],
                key_feature: Optional[str] = None) -> str:
    """The record's final key if it fits the spec; raises RecordError (decode or validate) if not."""
    example = validate_example(serialized, spec)
    return key_from_feature(example, key_feature) if key_feature else key


def record_dead_letter(error: RecordError, key: str, serialized: bytes):
    return dead_letter(error.stage, error, key=key, raw=serialized, source=key)


class ValidateRecordsFn(beam.DoFn):
    def __init__(self, spec: Sequence[Feature], key_feature: Optional[str] = None):
        self._spec = tuple(spec)
        self._key_feature = key_feature

    def process(self, element):
        key, serialized = element
        try:
            yield checked_key(key, serialized, self._spec, self._key_feature), serialized
        except RecordError as e:
            metrics.dead_letter_counter(e.stage).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record_dead_letter(e, key, serialized))


class ValidateRecords(beam.PTransform):
    """(key, bytes) -> ((key, bytes) that fit the spec, dead letters at stage decode/validate)."""

    def __init__(self, spec: Sequence[Feature], key_feature: Optional[str] = None):
        super().__init__()
        self._spec = tuple(spec)
        self._key_feature = key_feature

    def expand(self, records):
        result = records | beam.ParDo(ValidateRecordsFn(self._spec, self._key_feature)).with_outputs(
            DEAD_LETTER_TAG, main="valid")
        return result.valid, result[DEAD_LETTER_TAG]
