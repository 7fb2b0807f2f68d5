"""JSON Lines text for prediction rows and dead letters (orjson: fast, and exact for float32).

scored_chunk_text formats a whole ScoredChunk at once: each numeric output column is serialised
in one call and cut into per-row fragments (the keys likewise), so the per-row Python work is
one string concatenation.
Columns that are not finite numbers (strings, NaN, inf) take the per-row path of transforms.rows;
both paths give rows with the same values.
"""

from typing import List, Mapping, Optional

import numpy as np
import orjson

from transforms.rows import KEY_FIELD, outputs_to_json, prediction_row


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


def scored_chunk_text(model_name: str, keys, outputs: Mapping[str, np.ndarray]) -> str:
    """All rows of a chunk as JSON Lines text (no trailing newline)."""
    names = sorted(outputs)
    fragments = [column_fragments(outputs[name]) for name in names]
    if any(f is None for f in fragments):
        return "\n".join(
            to_json_line(prediction_row(key, {model_name: outputs_to_json(
                {name: outputs[name][i] for name in names})}))
            for i, key in enumerate(keys))
    head = "{" + orjson.dumps(KEY_FIELD).decode() + ':"'
    after_key = '",' + orjson.dumps(model_name).decode() + ":{"
    labels = [orjson.dumps(name).decode() + ":" for name in names]
    if len(names) == 1:  # the common case: one concatenation per row
        middle = after_key + labels[0]
        return "\n".join([head + key + middle + value + "}}"
                          for key, value in zip(key_fragments(keys), fragments[0])])
    values = [",".join(label + value for label, value in zip(labels, row)) for row in zip(*fragments)]
    return "\n".join([head + key + after_key + value + "}}"
                      for key, value in zip(key_fragments(keys), values)])


def key_fragments(keys) -> List[str]:
    """The JSON-escaped text of each key, without its quotes, from one serialisation of them all.

    Inside JSON strings every quote is escaped, so '","' occurs only between two elements.
    """
    return orjson.dumps(list(keys)).decode()[2:-2].split('","')
