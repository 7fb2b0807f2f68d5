"""Prediction rows of a scored graph chunk, as JSON Lines text (the form every sink starts from).

One row per key: {"key": k, "<model>": {<outputs>}, ..., "inputs": {<passthrough features>}}.
A model that failed on the record is absent from its row (its dead letter says why); a record on
which every model failed has no row. With row_per_model, one row per (key, model) instead:
{"key": k, "model": "<model>", "outputs": {...}, "inputs": {...}}.

Each output column is serialised once for the chunk and cut into per-row fragments
(transforms.jsonl.output_fragments); only columns that are not finite numbers go value by value.
"""

from typing import Dict, List, Mapping, Optional, Sequence

import orjson

from models.examples import RecordError, feature_values, parse_example
from transforms.graph import INPUTS_FIELD, MODEL_FIELD, OUTPUTS_FIELD
from transforms.graph_executor import ModelResult
from transforms.jsonl import key_fragments, output_fragments
from transforms.rows import KEY_FIELD, to_json_value


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


def rows_text(keys: Sequence[str], models: Mapping[str, ModelResult], records: Sequence[bytes] = (),
              passthrough: Sequence[str] = (), scalars: Optional[Mapping[str, Optional[bool]]] = None,
              row_per_model: bool = False) -> List[str]:
    """JSON lines for the chunk positions covered by at least one model, in position order.

    models maps model name -> ModelResult (chunk positions, columnar outputs), in graph order.
    """
    positions = sorted({i for result in models.values() for i in result.indices})
    keys_json = dict(zip(positions, key_fragments([keys[i] for i in positions])))
    per_model: Dict[str, Dict[int, str]] = {
        name: dict(zip(result.indices, output_fragments(result.outputs))) for name, result in models.items()}
    tail = {}
    if passthrough:
        tail = dict(zip(positions, passthrough_fragments(
            [records[i] for i in positions], passthrough, scalars or {})))
    key_label = "{" + _dumps(KEY_FIELD) + ':"'
    inputs_label = "," + _dumps(INPUTS_FIELD) + ":"
    lines = []
    if row_per_model:
        labels = {name: '",' + _dumps(MODEL_FIELD) + ":" + _dumps(name) + "," + _dumps(OUTPUTS_FIELD) + ":"
                  for name in models}
        for i in positions:
            extra = inputs_label + tail[i] if passthrough else ""
            for name, fragments in per_model.items():
                if i in fragments:
                    lines.append(key_label + keys_json[i] + labels[name] + fragments[i] + extra + "}")
        return lines
    labels = {name: _dumps(name) + ":" for name in models}
    for i in positions:
        body = ",".join(labels[name] + fragments[i] for name, fragments in per_model.items() if i in fragments)
        extra = inputs_label + tail[i] if passthrough else ""
        lines.append(key_label + keys_json[i] + '",' + body + extra + "}")
    return lines


def rows_from_lines(lines: Sequence[str]) -> List[dict]:
    """Row dicts, for sinks that take rows (BigQuery): exactly what the JSON Lines hold."""
    return [orjson.loads(line) for line in lines]
