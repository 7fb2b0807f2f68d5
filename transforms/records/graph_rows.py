"""Prediction rows of a scored graph chunk, as JSON Lines text (the form every sink starts from).

One row per key: {"key": k, "<model>": {<outputs>}, ..., "inputs": {<passthrough features>},
"source": {<where the record came from>}} (inputs with passthrough features, source with --with_source).
A model that failed on the record is absent from its row (its dead letter says why); a record on
which every model failed has no row. With row_per_model, one row per (key, model) instead:
{"key": k, "model": "<model>", "outputs": {...}, "inputs": {...}}.

Each output column is serialised once for the chunk and cut into per-row fragments
(transforms.records.json_lines.output_fragments); only columns that are not finite numbers go value by value.
"""

from typing import List, Mapping, Optional, Sequence

import orjson

from models.examples import RecordError, feature_values, parse_example
from transforms.graph.model import INPUTS_FIELD, MODEL_FIELD, OUTPUTS_FIELD, SOURCE_FIELD
from transforms.scoring.executor import ModelResult, covered_positions
from transforms.records.json_lines import key_fragments, output_fragments
from transforms.records.rows import KEY_FIELD, to_json_value


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
    head = ["{" + _dumps(KEY_FIELD) + ':"' + k + '",' for k in key_fragments([keys[i] for i in positions])]
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
