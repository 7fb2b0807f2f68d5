"""Runs of rows -> the model's feature arrays, a whole run at a time. Pure.

Two kinds of run: an Arrow record batch (Parquet: clean_block) and decoded instances (JSON
Lines objects, CSV rows, BigQuery rows: clean_instances, which builds one Arrow column per
feature, typed by the spec). A run whose values all fit the feature spec as they are becomes
arrays in one step per column: exactly what converting each row (InstanceOptions.convert, the
rules of transforms.sources.instances) and parsing its tf.Example by the spec would give,
without a tf.Example per row. A run is taken whole or not at all: where any row might convert
otherwise (a null, a list of another length, a value the feature's dtype does not hold, a type
these rules do not read in bulk: dates, decimals, nested structs...), both say None and the
source converts the run row by row, as for every row-shaped source, with a dead letter for each
row that does not fit. So the bulk path never changes what a row becomes; it only skips the
per-row work when nothing can go wrong (tests/test_column_arrays.py checks that on random runs).

What the bulk path reads: for a float32 feature, integer, floating and bool values (floats within
float32's range); for int64, integers (within int64) and bools; for string, text and binary
values; for a raw-encoded feature, binary values of its byte size. A feature of n values takes
(nested) lists that each hold n values (fixed-size or not); a one-value feature also plain
values. Variable-length, raw-encoded (from decoded instances) and preprocessed features go row
by row.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from models.serving.feature_spec import RAW, Feature
from transforms.sources.instances import FLOAT32_MAX, INT64_MAX, INT64_MIN, MAX_NESTING


def _types():
    import pyarrow as pa

    return pa.types


def _is_list(t) -> bool:
    types = _types()
    return types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t)


def _is_text(t) -> bool:
    types = _types()
    return (types.is_string(t) or types.is_large_string(t) or types.is_binary(t) or types.is_large_binary(t)
            or types.is_fixed_size_binary(t))


def _leaves(column, size: int):
    """The column's leaf values (a flat Arrow array, n * size of them) when every row holds
    exactly size values in lists of one length per level (or one plain value, for size 1) and
    no null at any level; else None."""
    import pyarrow.compute as pc

    per_row, depth = 1, 0
    while _is_list(column.type):
        depth += 1
        if column.null_count or depth > MAX_NESTING:
            return None
        if _types().is_fixed_size_list(column.type):  # every list of one length: nothing to count
            per_row *= column.type.list_size
            column = column.flatten()
            continue
        lengths = pc.list_value_length(column)
        low, high = pc.min_max(lengths).values() if len(lengths) else (None, None)
        if low is None or low.as_py() != high.as_py():
            return None
        per_row *= low.as_py()
        column = column.flatten()
    if per_row != size or column.null_count:
        return None
    return column


def _numbers(leaves, dtype: str) -> Optional[np.ndarray]:
    """Leaf values as float32 or int64 the way the per-row rules store them; None where one
    would be refused or read otherwise."""
    t = leaves.type
    types = _types()
    if (dtype == "float32" and types.is_float32(t)) or (dtype == "int64" and types.is_int64(t)):
        return leaves.to_numpy(zero_copy_only=False)  # already the stored type: nothing to check
    if types.is_boolean(t):
        values = leaves.to_numpy(zero_copy_only=False).astype(np.int64)
    elif types.is_integer(t) or (dtype == "float32" and types.is_floating(t)):
        values = leaves.to_numpy(zero_copy_only=False)
    else:
        return None
    if dtype == "int64":
        if values.dtype == np.uint64 and len(values) and values.max() > INT64_MAX:
            return None
        return values.astype(np.int64)
    wide = values.astype(np.float64)  # as Python's float() of the value, then float32, as the proto stores it
    finite = wide[np.isfinite(wide)]
    if len(finite) and np.abs(finite).max() > FLOAT32_MAX:
        return None
    return wide.astype(np.float32)


def _byte_values(leaves) -> Optional[np.ndarray]:
    import pyarrow as pa

    if not _is_text(leaves.type):
        return None
    if not (_types().is_binary(leaves.type) or _types().is_fixed_size_binary(leaves.type)):
        leaves = leaves.cast(pa.large_binary() if _types().is_large_string(leaves.type) else pa.binary())
    return leaves.to_numpy(zero_copy_only=False)


def feature_array(column, feature: Feature) -> Optional[np.ndarray]:
    """One feature's values for every row of an Arrow column: [n, *stored shape] of the
    storage dtype (bytes objects for string), or None where some row needs the per-row rules."""
    if feature.varlen or feature.preprocess is not None:
        return None
    n = len(column)
    if feature.encoding == RAW:  # bytes only: text or lists go the per-row way (numbers packed there)
        t = column.type
        if column.null_count or not (_types().is_binary(t) or _types().is_large_binary(t)
                                     or _types().is_fixed_size_binary(t)):
            return None
        values = column.to_numpy(zero_copy_only=False)
        return values if all(len(v) == feature.raw_nbytes for v in values) else None
    leaves = _leaves(column, feature.size)
    if leaves is None:
        return None
    values = _byte_values(leaves) if feature.dtype == "string" else _numbers(leaves, feature.dtype)
    return None if values is None else values.reshape((n,) + tuple(feature.shape))


def _safe_extra(column) -> bool:
    """Whether every row's value of a field outside the spec converts without an error (kept,
    or left out as the rules leave it): plain or flat-list numbers, bools and text, struct
    values (never kept), all-null columns."""
    types = _types()
    t = column.type
    if types.is_null(t) or types.is_struct(t):
        return True
    if _is_list(t):
        t = t.value_type
        column = column.flatten()
        if _is_list(t):
            return False
    if _is_text(t) or types.is_boolean(t):
        return True
    if types.is_integer(t):
        return not (types.is_uint64(t) and column.null_count < len(column) and
                    np.nanmax(column.to_numpy(zero_copy_only=False).astype(np.float64)) > INT64_MAX)
    if types.is_floating(t):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        finite = values[np.isfinite(values)]
        return not (len(finite) and np.abs(finite).max() > FLOAT32_MAX)
    return False


def selected_columns(names: Sequence[str], options) -> List[str]:
    """The batch's columns that reach each row's tf.Example (InstanceOptions.convert's choice)."""
    key = options.key_field
    names = [n for n in names if n != key]
    if options.included_fields:
        kept = set(names)
        names = [n for n in options.included_fields if n in kept]
    else:
        names = [n for n in names if n not in set(options.excluded_fields)]
    return names + [key] if key and options.keep_key else names


def batch_keys(batch, key_field: str) -> Optional[List[str]]:
    """Every row's key from its key column (text or integers, no null, no empty text: the position
    keys such a row), else None."""
    if key_field not in batch.schema.names:
        return None
    column = batch.column(key_field)
    t = column.type
    if column.null_count or not (_types().is_string(t) or _types().is_large_string(t) or _types().is_integer(t)):
        return None
    values = column.to_pylist()
    if not (_types().is_string(t) or _types().is_large_string(t)):
        return [str(v) for v in values]
    return None if "" in values else values


def clean_block(batch, options) -> Optional[Tuple[Optional[List[str]], Dict[str, np.ndarray]]]:
    """(keys from the key column, or None without one; {spec feature name: array}) of a record
    batch whose every row converts cleanly by options (InstanceOptions), the arrays exactly what
    each row's tf.Example would parse to; None when any row might convert otherwise."""
    if not batch.num_rows or options.image_columns:
        return None
    keys = None
    if options.key_field:
        keys = batch_keys(batch, options.key_field)
        if keys is None:
            return None
    selected = selected_columns(batch.schema.names, options)
    spec_names = {f.name for f in options.spec}
    arrays = {}
    for feature in options.spec:
        if feature.name not in selected:
            return None  # missing: a default fills it, or it is each row's dead letter
        array = feature_array(batch.column(feature.name), feature)
        if array is None:
            return None
        arrays[feature.name] = array
    if options.keep_extra and not all(_safe_extra(batch.column(n)) for n in selected if n not in spec_names):
        return None
    return keys, arrays


def _json_scalar_ok(value) -> bool:
    """Whether a decoded value outside the spec converts without an error as an extra field."""
    kind = type(value)
    if value is None or kind in (str, bytes, bool, dict):
        return True
    if kind is int:
        return INT64_MIN <= value <= INT64_MAX
    if kind is float:
        return not math.isfinite(value) or abs(value) <= FLOAT32_MAX
    return False


def _extra_ok(value) -> bool:
    if type(value) is list:  # a flat list of scalars (nested ones go row by row)
        return all(type(v) is not list and _json_scalar_ok(v) for v in value)
    return _json_scalar_ok(value)


def _leaf_type(feature: Feature, leaf):
    import pyarrow as pa

    t = leaf
    for _ in feature.shape:
        t = pa.list_(t)
    return t


def _typed_column(values: list, feature: Feature):
    """The values (decoded JSON, CSV cells) as an Arrow column of the feature's nesting, or None
    where pyarrow refuses them. Integers are built twice, as int64 and as float64, and must agree:
    pyarrow truncates 1.5 to 1 where the per-row rules refuse it."""
    import pyarrow as pa

    leaf = {"float32": pa.float64(), "int64": pa.int64(), "string": pa.string()}[feature.dtype]
    try:
        try:
            column = pa.array(values, _leaf_type(feature, leaf))
        except (pa.ArrowException, TypeError, ValueError):
            if feature.size == 1:
                column = pa.array(values, leaf)  # a one-value feature also takes plain values
            elif len(feature.shape) > 1:
                column = pa.array(values, pa.list_(leaf))  # a matrix also takes its values as one flat list
            else:
                raise
        if feature.dtype == "int64":
            as_float = pa.array(values, pa.float64() if column.type == leaf else _leaf_type(feature, pa.float64()))
            ints, floats = _leaves(column, feature.size), _leaves(as_float, feature.size)
            if ints is None or floats is None or not np.array_equal(
                    ints.to_numpy(zero_copy_only=False).astype(np.float64), floats.to_numpy(zero_copy_only=False)):
                return None
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None
    return column


def instance_keys(instances: Sequence[dict], key_field: str) -> Optional[List[str]]:
    """Every instance's key (non-empty text, or integers), else None."""
    values = [d.get(key_field) for d in instances]
    if all(type(v) is str and v for v in values):
        return values
    if all(type(v) is int for v in values):
        return [str(v) for v in values]
    return None


def clean_instances(instances: Sequence[dict], options) -> Optional[Tuple[Optional[List[str]], Dict[str, np.ndarray]]]:
    """clean_block for decoded instances (JSON Lines objects, CSV rows): (keys, arrays) when every
    instance converts cleanly by options, the arrays what each one's tf.Example would parse to;
    None when any might convert otherwise."""
    if not instances or options.image_columns or not all(type(d) is dict for d in instances):
        return None
    keys = None
    if options.key_field:
        keys = instance_keys(instances, options.key_field)
        if keys is None:
            return None
    spec_names = {f.name for f in options.spec}
    if (options.included_fields and not spec_names <= set(options.included_fields)) or \
            spec_names & set(options.excluded_fields) or (options.key_field in spec_names and not options.keep_key):
        return None  # a feature the selection leaves out: each row's default or dead letter
    if options.keep_extra:
        skip = spec_names | ({options.key_field} if options.key_field else set())
        keep = set(options.included_fields) if options.included_fields else None
        for d in instances:
            for name, value in d.items():
                if name not in skip and (keep is None or name in keep) and name not in options.excluded_fields \
                        and not _extra_ok(value):
                    return None
    arrays = {}
    for feature in options.spec:
        if feature.varlen or feature.encoding == RAW or feature.preprocess is not None:
            return None
        column = _typed_column([d.get(feature.name) for d in instances], feature)
        array = None if column is None else feature_array(column, feature)
        if array is None:
            return None
        arrays[feature.name] = array
    return keys, arrays


def clean_rows(rows, options):
    """clean_block of an Arrow record batch, clean_instances of a list of decoded instances."""
    return clean_instances(rows, options) if isinstance(rows, list) else clean_block(rows, options)


def column_arrays(rows, options) -> Optional[Dict[str, np.ndarray]]:
    """clean_rows' arrays alone."""
    block = clean_rows(rows, options)
    return None if block is None else block[1]
