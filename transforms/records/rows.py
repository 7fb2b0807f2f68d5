"""Prediction rows: model outputs as JSON values, and whole chunks as JSON Lines text. Pure.

A row is {"key": k, "<model>": {"<output>": value}, ..., "inputs": {<passthrough features>},
"source": {<where the record came from>}} (inputs with passthrough features, source with
--with_source). A model that failed on the record is absent from its row (its dead letter says
why); a record on which every model failed has no row. With row_per_model, one row per (key,
model) instead: {"key": k, "model": "<model>", "outputs": {...}, "inputs": {...}}.

Values: an output of per-example shape [] becomes a scalar, [k] a list, [k, m] nested lists.
A float32 value becomes the shortest decimal that reads back as the same float32 (0.6369617, not
0.6369616985321045; float16 is treated as float32); float64 stays as it is; ints and bools stay;
byte strings become text when they are UTF-8, else {"b64": "<base64>"}. NaN and +/-inf, which
JSON cannot hold, become the strings "NaN", "Infinity", "-Infinity" (what BigQuery accepts).

Speed: each numeric output column is serialised once per chunk (orjson) and cut into per-row
fragments, the keys likewise; the chunk's text is then one str.join over those columns and the
constant text between them (interleave), with no per-row Python. Columns that are not finite
numbers (strings, NaN, inf) go value by value through to_json_value; both give the same values.
"""

import base64
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import orjson

from models.serving.examples import RecordError, feature_values, parse_example
from transforms.records.chunk import PREDICTION_LOG, ModelResult, covered_positions

KEY_FIELD = "key"
# Fields of the row-per-model form ({"key", "model": name, "outputs"}) and of passthrough features.
MODEL_FIELD, OUTPUTS_FIELD, INPUTS_FIELD, SOURCE_FIELD = "model", "outputs", "inputs", "source"
MODEL_VERSIONS_FIELD = "model_versions"  # streams with model refresh: {model: version directory name}


def _shortest_floats(value: np.ndarray) -> Any:
    """float32/float16 -> Python floats printing as the shortest decimal of the narrow float."""
    if value.dtype in (np.float32, np.float16):
        value = value[()] if value.ndim == 0 else np.ascontiguousarray(value)
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    return value.tolist()


def to_json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub":
            return value.tolist()
        if value.dtype.kind == "f" and np.isfinite(value).all():
            return _shortest_floats(value)
        if value.ndim == 0:
            return to_json_value(value[()])
        return [to_json_value(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (float, np.floating)):
        if isinstance(value, (np.float32, np.float16)) and np.isfinite(value):
            return _shortest_floats(np.asarray(value))
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def outputs_to_json(outputs: Mapping[str, Any], keep: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    names = sorted(outputs) if keep is None else list(keep)
    return {name: to_json_value(outputs[name]) for name in names}


def to_json_line(row: Mapping) -> str:
    return orjson.dumps(row).decode("utf-8")


def column_parts(column: np.ndarray) -> Optional[Tuple[str, List[str], str]]:
    """(opening, per-row JSON without its outer brackets, closing) of a [n, ...] numeric column,
    from one serialisation of it all; None when it needs the per-value path (not a finite number)."""
    kind = column.dtype.kind
    if kind not in "fiub" or (kind == "f" and not np.isfinite(column).all()):
        return None
    depth = column.ndim - 1
    opening, closing = "[" * depth, "]" * depth
    if not len(column):
        return opening, [], closing
    text = orjson.dumps(np.ascontiguousarray(column), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if depth == 0:
        return opening, text[1:-1].split(","), closing
    # rows of a regular array are the only places where depth closing brackets meet a comma
    return opening, text[depth + 1:-(depth + 1)].split(closing + "," + opening), closing


Piece = Union[str, List[str]]


def interleave(pieces: Sequence[Piece], count: int) -> str:
    """count lines joined by newlines, line i the concatenation of the pieces (a str: the same in
    every line; a list: its item i), made by one str.join for the whole chunk."""
    if not count:
        return ""
    merged: List[Piece] = [""]
    for piece in pieces:
        if isinstance(piece, str) and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    if len(merged) == 1:  # the same text on every line
        return "\n".join(merged * count)
    if not isinstance(merged[-1], str):
        merged.append("")
    first, middle, last = merged[0], merged[1:-1], merged[-1]
    period = len(middle) + 1  # the middle pieces, then what ends a line and starts the next
    parts: List[Optional[str]] = [None] * (period * count)
    for j, piece in enumerate(middle):
        parts[j::period] = piece if isinstance(piece, list) else [piece] * count
    parts[period - 1::period] = [last + "\n" + first] * count
    parts[-1] = last
    return first + "".join(parts)


def output_pieces(outputs: Mapping[str, np.ndarray]) -> List[Piece]:
    """The pieces (interleave) of one model's outputs as a JSON object per row: '{"a":..,"b":..}'."""
    pieces: List[Piece] = ["{"]
    for j, name in enumerate(sorted(name for name in outputs if name != PREDICTION_LOG)):
        parts = column_parts(outputs[name])
        if parts is None:  # strings, NaN, inf: value by value
            parts = "", [_dumps(to_json_value(v)) for v in outputs[name]], ""
        opening, values, closing = parts
        pieces += [("," if j else "") + _dumps(name) + ":" + opening, values, closing]
    pieces.append("}")
    return pieces


def output_fragments(outputs: Mapping[str, np.ndarray]) -> List[str]:
    """The JSON object text of each row of one model's columnar outputs: '{"a":..,"b":..}'."""
    count = len(next(iter(outputs.values()))) if outputs else 0
    return interleave(output_pieces(outputs), count).split("\n") if count else []


def key_fragments(keys) -> List[str]:
    """The JSON-escaped text of each key, without its quotes, from one serialisation of them all.

    Inside JSON strings every quote is escaped, so '","' occurs only between two elements.
    """
    return orjson.dumps(list(keys)).decode()[2:-2].split('","')


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


def passthrough_value(serialized: bytes, name: str, scalar: Optional[bool]):
    """A feature's value for the row: a scalar or a list (scalar=None: a single value is a scalar)."""
    values = record_feature_values(serialized, name)
    if not values:
        return None
    if scalar or (scalar is None and len(values) == 1):
        values = values[0]
    return to_json_value(values)


def record_feature_values(serialized: bytes, name: str) -> List[Any]:
    """The feature's values in a serialized tf.Example ([] when it is absent or the record is not one)."""
    try:
        return feature_values(parse_example(serialized), name)
    except RecordError:
        return []


def passthrough_fragments(records: Sequence[bytes], names: Sequence[str],
                          scalars: Mapping[str, Optional[bool]]) -> List[str]:
    return [_dumps({n: passthrough_value(r, n, scalars.get(n)) for n in names}) for r in records]


def _model_column(label: str, result: ModelResult, positions: List[int]) -> List[Optional[str]]:
    """'label:{...}' per position, None where the model has no outputs for that record."""
    fragments = [label + f for f in output_fragments(result.outputs)]
    if result.indices == positions:
        return fragments
    by_position = dict(zip(result.indices, fragments))
    return [by_position.get(i) for i in positions]


def rows_block(keys: Sequence[str], models: Mapping[str, ModelResult], records: Sequence[bytes] = (),
               passthrough: Sequence[str] = (), scalars: Optional[Mapping[str, Optional[bool]]] = None,
               row_per_model: bool = False, sources: Optional[Sequence[dict]] = None) -> Tuple[str, int]:
    """(JSON Lines text, number of lines) for the chunk positions covered by at least one model,
    in position order. models maps model name -> ModelResult (chunk positions, columnar outputs),
    in graph order.

    When every model has outputs for every covered position (all but failing chunks), the text
    is built column by column (interleave): no per-row Python.
    """
    positions = covered_positions(models, len(keys))
    if not positions:
        return "", 0
    if row_per_model or any(result.indices != positions for result in models.values()):
        lines = _rows_by_position(keys, models, positions, records, passthrough, scalars, row_per_model, sources)
        return "\n".join(lines), len(lines)
    everyone = len(positions) == len(keys)
    pieces: List[Piece] = ["{" + _dumps(KEY_FIELD) + ':"',
                           key_fragments(keys if everyone else [keys[i] for i in positions]), '",']
    for j, (name, result) in enumerate(models.items()):
        pieces += [("," if j else "") + _dumps(name) + ":"] + output_pieces(result.outputs)
    if sources is not None:
        pieces += ["," + _dumps(SOURCE_FIELD) + ":", [_dumps(sources[i]) for i in positions]]
    if passthrough:
        pieces += ["," + _dumps(INPUTS_FIELD) + ":", passthrough_fragments(
            [records[i] for i in positions], passthrough, scalars or {})]
    pieces.append("}")
    return interleave(pieces, len(positions)), len(positions)


def _rows_by_position(keys, models, positions, records, passthrough, scalars, row_per_model, sources) -> List[str]:
    """Rows of a chunk some model scored only part of, or one row per (key, model): row by row."""
    key_label = "{" + _dumps(KEY_FIELD) + ':"'
    head = [key_label + k + '",' for k in key_fragments([keys[i] for i in positions])]
    tails = ["}"] * len(positions)
    if passthrough:
        inputs_label = "," + _dumps(INPUTS_FIELD) + ":"
        tails = [inputs_label + f + "}" for f in passthrough_fragments(
            [records[i] for i in positions], passthrough, scalars or {})]
    if sources is not None:
        source_label = "," + _dumps(SOURCE_FIELD) + ":"
        tails = [source_label + _dumps(sources[i]) + tail for i, tail in zip(positions, tails)]
    if row_per_model:
        lines = []
        columns = [_model_column(_dumps(MODEL_FIELD) + ":" + _dumps(name) + "," + _dumps(OUTPUTS_FIELD) + ":",
                                 result, positions) for name, result in models.items()]
        for row, (start, end) in enumerate(zip(head, tails)):
            lines.extend(start + column[row] + end for column in columns if column[row] is not None)
        return lines
    columns = [_model_column(_dumps(name) + ":", result, positions) for name, result in models.items()]
    if len(columns) == 1:
        bodies = columns[0]
    else:
        bodies = [",".join(part for part in parts if part is not None) for parts in zip(*columns)]
    return [start + body + end for start, body, end in zip(head, bodies, tails)]


def rows_from_block(text: str, count: int) -> List[dict]:
    """The row dicts of rows_block's (text, count), for sinks that take rows (BigQuery, Pub/Sub):
    exactly what the JSON Lines hold."""
    return [orjson.loads(line) for line in text.split("\n")] if count else []
