"""JSON Lines text for prediction rows and dead letters (orjson: fast, and exact for float32).

scored_chunk_text formats a whole ScoredChunk at once: each numeric output column is serialised
in one call and cut into per-row fragments (the keys likewise), so the per-row Python work is
one string concatenation.
Columns that are not finite numbers (strings, NaN, inf) go value by value through
transforms.records.rows; both give the same values.
"""

from typing import List, Mapping, Optional

import numpy as np
import orjson

from transforms.records.rows import KEY_FIELD, to_json_value


def to_json_line(row: Mapping) -> str:
    return orjson.dumps(row).decode("utf-8")


def column_fragments(column: np.ndarray) -> Optional[List[str]]:
    """Per-row JSON of a [n, ...] numeric column, or None when it needs the per-row path."""
    kind = column.dtype.kind
    if kind not in "fiub" or (kind == "f" and not np.isfinite(column).all()):
        return None
    text = orjson.dumps(np.ascontiguousarray(column), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    depth = column.ndim - 1
    if depth == 0:
        return text[1:-1].split(",")
    # rows of a regular array are the only places where depth closing brackets meet a comma
    separator = "]" * depth + "," + "[" * depth
    inner = text[depth + 1:-(depth + 1)]
    opening, closing = "[" * depth, "]" * depth
    return [opening + part + closing for part in inner.split(separator)]


def output_fragments(outputs: Mapping[str, np.ndarray]) -> List[str]:
    """The JSON object text of each row of one model's columnar outputs: '{"a":..,"b":..}'."""
    names = sorted(outputs)
    columns = []
    for name in names:
        fragments = column_fragments(outputs[name])
        if fragments is None:  # strings, NaN, inf: value by value (transforms.records.rows)
            fragments = [orjson.dumps(to_json_value(v)).decode() for v in outputs[name]]
        columns.append(fragments)
    labels = [orjson.dumps(name).decode() + ":" for name in names]
    if len(names) == 1:
        label = "{" + labels[0]
        return [label + value + "}" for value in columns[0]]
    return ["{" + ",".join(label + value for label, value in zip(labels, row)) + "}"
            for row in zip(*columns)]


def scored_chunk_text(model_name: str, keys, outputs: Mapping[str, np.ndarray]) -> str:
    """All rows of a one-model chunk as JSON Lines text (no trailing newline)."""
    head = "{" + orjson.dumps(KEY_FIELD).decode() + ':"'
    middle = '",' + orjson.dumps(model_name).decode() + ":"
    return "\n".join([head + key + middle + value + "}"
                      for key, value in zip(key_fragments(keys), output_fragments(outputs))])


def key_fragments(keys) -> List[str]:
    """The JSON-escaped text of each key, without its quotes, from one serialisation of them all.

    Inside JSON strings every quote is escaped, so '","' occurs only between two elements.
    """
    return orjson.dumps(list(keys)).decode()[2:-2].split('","')
