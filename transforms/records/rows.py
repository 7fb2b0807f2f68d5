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
fragments, the keys likewise, so the per-row Python work is one string concatenation. Columns
that are not finite numbers (strings, NaN, inf) go value by value through to_json_value; both
give the same values.
"""

import base64
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import orjson

from models.examples import RecordError, feature_values, parse_example
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
    names = sorted(name for name in outputs if name != PREDICTION_LOG)
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


def key_fragments(keys) -> List[str]:
    """The JSON-escaped text of each key, without its quotes, from one serialisation of them all.

    Inside JSON strings every quote is escaped, so '","' occurs only between two elements.
    """
    return orjson.dumps(list(keys)).decode()[2:-2].split('","')


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


def passthrough_value(serialized: bytes, name: str, scalar: Optional[bool]):
    """A feature's value for the row: a scalar or a list (scalar=None: a single value is a scalar)."""
    try:
        values = feature_values(parse_example(serialized), name)
    except RecordError:
        return None
    if not values:
        return None
    if scalar or (scalar is None and len(values) == 1):
        values = values[0]
    return to_json_value(values)


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


def rows_text(keys: Sequence[str], models: Mapping[str, ModelResult], records: Sequence[bytes] = (),
              passthrough: Sequence[str] = (), scalars: Optional[Mapping[str, Optional[bool]]] = None,
              row_per_model: bool = False, sources: Optional[Sequence[dict]] = None) -> List[str]:
    """JSON lines for the chunk positions covered by at least one model, in position order.

    models maps model name -> ModelResult (chunk positions, columnar outputs), in graph order.
    """
    positions = covered_positions(models, len(keys))
    key_label = "{" + _dumps(KEY_FIELD) + ':"'
    if len(models) == 1 and not passthrough and sources is None and not row_per_model:
        # the common case in one pass: one model that scored every record, nothing else in the row
        ((name, result),) = models.items()
        if result.indices == positions:
            middle = '",' + _dumps(name) + ":"
            return [key_label + k + middle + f + "}" for k, f in zip(
                key_fragments(keys if len(positions) == len(keys) else [keys[i] for i in positions]),
                output_fragments(result.outputs))]
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


def rows_from_lines(lines: Sequence[str]) -> List[dict]:
    """Row dicts, for sinks that take rows (BigQuery): exactly what the JSON Lines hold."""
    return [orjson.loads(line) for line in lines]
