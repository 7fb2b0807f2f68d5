"""Instances (JSON objects, CSV rows, BigQuery rows) -> serialized tf.Example, by a feature spec.

One conversion for every row-shaped source, pure and tested without a pipeline. The rules (their
user-facing copy: docs/sources.md, "How fields and CSV cells are written"):

- A field the spec names is stored with the spec's dtype. float32 takes int, float and Decimal
  (and NaN or an infinity as text: "NaN", "Infinity", "-Infinity", "nan", "inf", in any case);
  int64 takes int, bool and integral floats or Decimals; string takes str, bytes and a Vertex-style
  {"b64": "..."} object. Anything else is a ConversionError that names the field.
- None or a missing field leaves the feature out: the spec's default fills it, and a required
  feature without a value is a ConversionError.
- Lists are flattened (nested lists for matrices) and must hold exactly the feature's value count;
  a one-value feature also takes a scalar.
- Dates and times: a string feature gets ISO 8601 text; a numeric feature gets seconds since the
  Unix epoch in UTC (a DATE is its midnight, a naive DATETIME is read as UTC, a TIME counts from
  midnight). ISO 8601 date or date-time text without a zone counts as a date or time for numeric
  features (BigQuery's DATETIME arrives as such text).
- A raw-encoded feature takes bytes (or {"b64"}) of exactly its byte size, or nested lists of
  numbers, packed as its model dtype.
- With keep_extra, fields the spec does not name are kept, typed by their values, when they are a
  scalar or a flat list of one kind (so --passthrough can copy them); other extras are left out.
- A number that does not fit the stored type (a float32 overflow such as 1e39, an int64 out of
  range, a raw feature's model dtype) is a ConversionError naming the field, never a silent inf
  or wrap-around; so are lists nested deeper than MAX_NESTING.
- Whatever goes wrong converting one instance is a ConversionError for that instance: no input
  value, however odd, raises anything else.
"""

import base64
import binascii
import datetime
import decimal
import math
import re
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from tensorflow.core.example import example_pb2

from models.serving.feature_spec import RAW, Feature

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_NESTING = 32  # list levels in one value; a tensor of rank 32 is already absurd
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class ConversionError(ValueError):
    """An instance that cannot become the model's tf.Example; the message names the field."""


def _flatten(value: Any) -> List[Any]:
    """The leaves of nested lists, in order; iterative, so a deeply nested value cannot exhaust
    the stack (a ~1,000-deep JSON list is a 2 KB line)."""
    flat: List[Any] = []
    stack = [(iter([value]), 0)]
    while stack:
        items, depth = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, (list, tuple)):
            if depth >= MAX_NESTING:
                raise ConversionError(f"lists nested deeper than {MAX_NESTING} levels")
            stack.append((iter(item), depth + 1))
        elif isinstance(item, np.ndarray):
            flat.extend(item.reshape(-1).tolist())
        else:
            flat.append(item)
    return flat


_END = object()


def _b64_object(value: Any) -> Optional[bytes]:
    """The bytes of {"b64": "..."} (Vertex AI's JSON form of binary data), else None."""
    if isinstance(value, Mapping) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as e:
            raise ConversionError(f"invalid base64 ({e})") from e
    return None


def epoch_seconds(value: Any) -> float:
    """Seconds since the Unix epoch (UTC) of a date, datetime (naive = UTC) or time of day."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - _EPOCH).total_seconds()
    if isinstance(value, datetime.date):
        return float((value - _EPOCH.date()).days * 86400)
    if isinstance(value, datetime.time):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    raise TypeError(value)


_TEMPORAL = (datetime.date, datetime.time)  # datetime.datetime is a datetime.date
# ISO 8601 date or date-time text without a zone: how BigQuery's DATETIME arrives in DIRECT_READ rows
_ISO_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?")


def _temporal_text(value: Any) -> Any:
    """A date or datetime for ISO 8601 text (numeric features), else the value unchanged."""
    if isinstance(value, str) and _ISO_TEXT.fullmatch(value):
        parsed = datetime.datetime.fromisoformat(value)
        return parsed.date() if len(value) == 10 else parsed
    return value


# NaN and the infinities as text: what prediction rows write ("NaN", "Infinity", "-Infinity") and
# what Python and C print ("nan", "inf"), in any case
NON_FINITE_TEXT = frozenset(sign + name for sign in ("", "+", "-") for name in ("nan", "inf", "infinity"))


def _to_float(value: Any) -> float:
    """A float32 feature value; refuses what float32 cannot hold (NaN and infinities pass, as
    numbers or as NON_FINITE_TEXT: they are values a model may be meant to see)."""
    value = _temporal_text(value)
    if isinstance(value, str) and value.strip().lower() in NON_FINITE_TEXT:
        return float(value)
    if isinstance(value, (bool, int, float, decimal.Decimal, np.integer, np.floating)):
        try:
            number = float(value)
        except OverflowError:  # an int or Decimal beyond any float
            raise ConversionError(f"{_describe(value)} overflows float32") from None
    elif isinstance(value, _TEMPORAL):
        number = epoch_seconds(value)
    else:
        raise ConversionError(f"{_describe(value)} is not a number")
    if math.isfinite(number) and abs(number) > FLOAT32_MAX:
        raise ConversionError(f"{_describe(value)} overflows float32 (largest {FLOAT32_MAX:.7g})")
    return number


def _to_int(value: Any) -> int:
    value = _temporal_text(value)
    if isinstance(value, (float, decimal.Decimal, np.floating)):
        if not math.isfinite(value) or value != int(value):
            raise ConversionError(f"{value!r} is not a whole number")
        value = int(value)
    elif isinstance(value, _TEMPORAL):
        seconds = epoch_seconds(value)
        if seconds != int(seconds):
            raise ConversionError(f"{value!r} has a fraction of a second; use a float feature")
        value = int(seconds)
    elif not isinstance(value, (bool, int, np.integer)):
        raise ConversionError(f"{_describe(value)} is not an integer")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ConversionError(f"{value} does not fit in int64")
    return value


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    if isinstance(value, _TEMPORAL):
        return value.isoformat().encode("ascii")
    decoded = _b64_object(value)
    if decoded is not None:
        return decoded
    raise ConversionError(f"{_describe(value)} is not text or bytes")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


_CONVERTERS = {"float32": _to_float, "int64": _to_int, "string": _to_bytes}


def _raw_bytes(value: Any, feature: Feature) -> bytes:
    if isinstance(value, (bytes, Mapping)):
        data = _to_bytes(value)
    else:
        numbers = [_to_float(v) for v in _flatten(value)]
        if len(numbers) != math.prod(feature.shape):
            raise ConversionError(f"has {len(numbers)} numbers, shape {list(feature.shape)} needs "
                                  f"{math.prod(feature.shape)}")
        data = _packed(numbers, feature.model_dtype).tobytes()
    if len(data) != feature.raw_nbytes:
        raise ConversionError(f"holds {len(data)} bytes, raw {feature.model_dtype}{list(feature.shape)} "
                              f"needs {feature.raw_nbytes}")
    return data


def _packed(numbers: Sequence[float], dtype: str) -> np.ndarray:
    """numbers as an array of the model's dtype; ConversionError where one does not fit it."""
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        bad = [n for n in numbers if not (math.isfinite(n) and n == int(n) and info.min <= n <= info.max)]
        if bad:
            raise ConversionError(f"{bad[0]!r} does not fit {dtype}")
    elif kind.kind == "f":
        largest = float(np.finfo(kind).max)
        bad = [n for n in numbers if math.isfinite(n) and abs(n) > largest]
        if bad:
            raise ConversionError(f"{bad[0]!r} overflows {dtype} (largest {largest:.7g})")
    return np.asarray(numbers, dtype=kind)


def feature_list(value: Any, feature: Feature) -> List[Any]:
    """The values to store for one spec feature; raises ConversionError (without the field name)."""
    if feature.encoding == RAW:
        return [_raw_bytes(value, feature)]
    flat = [value] if _b64_object(value) is not None else _flatten(value)
    if any(v is None for v in flat):
        raise ConversionError("a list holds a null")
    convert = _CONVERTERS[feature.dtype]
    values = [convert(v) for v in flat]  # "'abc' is not a number" says more than a count
    if len(values) != feature.size and not feature.varlen:  # a variable-length feature takes any number
        raise ConversionError(f"has {len(values)} values, shape {list(feature.shape)} needs {feature.size}")
    return values


def _extra_dtype(flat: Sequence[Any]) -> Optional[str]:
    """The dtype of an extra field's values, or None when they do not share one simple kind."""
    if not flat:
        return None
    kinds = set()
    for v in flat:
        if isinstance(v, (str, bytes, datetime.date, datetime.time)):
            kinds.add("string")
        elif isinstance(v, (bool, int, np.integer)):
            kinds.add("int64")
        elif isinstance(v, (float, decimal.Decimal, np.floating)):
            kinds.add("float32")
        else:
            return None
    if kinds == {"int64", "float32"}:
        return "float32"
    return kinds.pop() if len(kinds) == 1 else None


def _store(example: example_pb2.Example, name: str, dtype: str, values: Iterable[Any]) -> None:
    feature = example.features.feature[name]
    if dtype == "float32":
        feature.float_list.value.extend(values)
    elif dtype == "int64":
        feature.int64_list.value.extend(values)
    else:
        feature.bytes_list.value.extend(values)


def instance_to_example(instance: Mapping[str, Any], spec: Sequence[Feature],
                        keep_extra: bool = False) -> bytes:
    """The serialized tf.Example of one instance; raises ConversionError naming every bad field."""
    if not isinstance(instance, Mapping):
        raise ConversionError(f"an instance is an object of fields, not {_describe(instance)}")
    example = example_pb2.Example()
    problems = []
    for feature in spec:
        value = instance.get(feature.name)
        if value is None:
            if feature.required:
                problems.append(f"{feature.name!r}: required and missing (or null)")
            continue
        try:
            _store(example, feature.name, feature.dtype, feature_list(value, feature))
        except Exception as e:  # pylint: disable=broad-except  # any failure is this field's problem
            problems.append(f"{feature.name!r}: {_reason(e)}")
    if keep_extra:
        named = {f.name for f in spec}
        for name, value in instance.items():
            if name in named or value is None or isinstance(value, Mapping):
                continue
            try:
                flat = _flatten(value)
                dtype = _extra_dtype(flat)
                if dtype is not None:
                    _store(example, name, dtype, [_CONVERTERS[dtype](v) for v in flat])
            except Exception as e:  # pylint: disable=broad-except  # named, like the spec's fields
                problems.append(f"{name!r}: {_reason(e)}")
    if problems:
        raise ConversionError("; ".join(problems))
    return example.SerializeToString()


def _reason(error: Exception) -> str:
    """A conversion problem in words: our own message, or the unexpected error's type and text."""
    return str(error) if isinstance(error, ConversionError) else f"{type(error).__name__}: {error}"


def as_conversion_error(error: Exception, prefix: str = "") -> ConversionError:
    """Any error converting one record, as that record's ConversionError (its dead letter)."""
    return ConversionError(prefix + _reason(error))


def select_fields(instance: Mapping[str, Any], included: Sequence[str] = (),
                  excluded: Sequence[str] = ()) -> dict:
    """The instance's fields restricted to included, or without excluded (Vertex AI's options)."""
    if included:
        return {name: instance[name] for name in included if name in instance}
    return {name: value for name, value in instance.items() if name not in excluded}


def instance_key(instance: Mapping[str, Any], key_field: str) -> str:
    """The key from a field (text or integer); raises ConversionError when it has none."""
    value = instance.get(key_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConversionError(f"key field {key_field!r} is {'missing' if value is None else _describe(value)}; "
                              "a key is a string or an integer")
    return str(value)
