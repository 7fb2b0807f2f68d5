"""Arrow record batches -> the model's feature arrays, a whole batch at a time. Pure.

The rows of a batch whose columns all fit the feature spec as they are become arrays in one
step per column: exactly what converting each row (InstanceOptions.convert, the rules of
transforms.sources.instances) and parsing its tf.Example by the spec would give, without a
Python object per row. A batch is taken whole or not at all: where any row might convert
otherwise (a null, a list of another length, a value the feature's dtype does not hold, a type
these rules do not read in bulk: dates, decimals, nested structs...), column_arrays says None
and the source converts the batch row by row, as for every row-shaped source, with a dead
letter for each row that does not fit. So the bulk path never changes what a row becomes;
it only skips the per-row work when nothing can go wrong.

What the bulk path reads: for a float32 feature, integer, floating and bool columns (floats
within float32's range); for int64, integer (within int64) and bool columns; for string,
string and binary columns; for a raw-encoded feature, binary values of its byte size. A feature
of n values takes (nested) list columns whose lists each hold n values (fixed-size or not); a
one-value feature also a plain column. Variable-length features go row by row.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from models.serving.feature_spec import RAW, Feature
from transforms.sources.instances import FLOAT32_MAX, INT64_MAX, MAX_NESTING


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


def _is_int(t) -> bool:
    return _types().is_integer(t) or _types().is_boolean(t)


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


def column_arrays(batch, options) -> Optional[Dict[str, np.ndarray]]:
    """clean_block's arrays alone."""
    block = clean_block(batch, options)
    return None if block is None else block[1]
