"""BigQuery table schemas for prediction rows and dead letters, and rows shaped to fit them. Pure.

A prediction row is written as it reads in JSON Lines: a `key` STRING column, one RECORD column
per model holding its outputs, `inputs` (RECORD, with --passthrough) and `source` (RECORD, with
--with_source). An output column's type comes from the model's outputs after its post-processing:
float -> FLOAT64, integer -> INT64, bool -> BOOL, text or bytes -> STRING (bytes that are not
UTF-8 as base64 text). Per-example shape [] is a NULLABLE column; [k] is REPEATED; [k, m, ...] is
REPEATED too, flattened in row-major order (BigQuery has no arrays of arrays), with the shape in
the column's description.

The types come from transforms.sinks.output_columns (each model's post-processing run on
all-zero outputs built from the SignatureDef), as Parquet's do.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from transforms.sinks.output_columns import SchemaError, output_columns  # noqa: F401  (SchemaError re-exported)
from transforms.graph.model import ModelGraph
from transforms.records.rows import INPUTS_FIELD, KEY_FIELD, MODEL_VERSIONS_FIELD, SOURCE_FIELD

SOURCE_SCHEMA = {"name": SOURCE_FIELD, "type": "RECORD", "mode": "NULLABLE", "fields": [
    {"name": "file", "type": "STRING", "mode": "NULLABLE"},
    {"name": "record", "type": "INT64", "mode": "NULLABLE"},
    {"name": "offset", "type": "INT64", "mode": "NULLABLE"},
    {"name": "line", "type": "INT64", "mode": "NULLABLE"},
    {"name": "table", "type": "STRING", "mode": "NULLABLE"},
    {"name": "query", "type": "STRING", "mode": "NULLABLE"},
    {"name": "message_id", "type": "STRING", "mode": "NULLABLE"},
]}
# transforms.records.dead_letters.FIELDS, with the same source RECORD as prediction rows
DEAD_LETTER_SCHEMA = {"fields": [
    {"name": "key", "type": "STRING", "mode": "NULLABLE"},
    {"name": "stage", "type": "STRING", "mode": "REQUIRED"},
    {"name": "error_type", "type": "STRING", "mode": "NULLABLE"},
    {"name": "error", "type": "STRING", "mode": "NULLABLE"},
    {"name": "input_base64", "type": "STRING", "mode": "NULLABLE"},
    {"name": "input_size", "type": "INT64", "mode": "NULLABLE"},
    {"name": "input_sha256", "type": "STRING", "mode": "NULLABLE"},
    SOURCE_SCHEMA,
    {"name": "model", "type": "STRING", "mode": "NULLABLE"},
]}
_FEATURE_TYPES = {"float32": "FLOAT64", "int64": "INT64", "string": "STRING"}


def bigquery_type(dtype: np.dtype) -> str:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return "FLOAT64"
    if kind in "iu":
        return "INT64"
    if kind == "b":
        return "BOOL"
    if kind in "SOU":
        return "STRING"
    raise SchemaError(f"no BigQuery type for dtype {dtype}")


def column(name: str, dtype: np.dtype, shape: Tuple[int, ...]) -> Dict[str, Any]:
    field = {"name": name, "type": bigquery_type(dtype), "mode": "REPEATED" if shape else "NULLABLE"}
    if len(shape) > 1:
        field["description"] = f"shape {list(shape)}, flattened row-major"
    return field


def model_record(node) -> Dict[str, Any]:
    """The RECORD column of one model's (post-processed) outputs."""
    fields = [column(name, dtype, tuple(1 if d is None else d for d in shape))
              for name, dtype, shape in output_columns(node, "BigQuery")]
    return {"name": node.name, "type": "RECORD", "mode": "NULLABLE", "fields": fields}


def prediction_schema(graph: ModelGraph, passthrough_types: Optional[Mapping[str, Tuple[str, int]]] = None,
                      with_source: bool = False, with_versions: bool = False) -> Dict[str, Any]:
    """The table schema of one row per key. passthrough_types: feature -> (storage dtype, size;
    None for a variable-length feature). with_versions: the models' version names
    (MODEL_VERSIONS_FIELD, a refreshed stream)."""
    fields = [{"name": KEY_FIELD, "type": "STRING", "mode": "REQUIRED"}]
    fields += [model_record(node) for node in graph.nodes]
    if graph.passthrough:
        types = passthrough_types or {}
        inputs = []
        for name in graph.passthrough:
            dtype, size = types.get(name, ("string", 1))
            inputs.append({"name": name, "type": _FEATURE_TYPES[dtype],
                           "mode": "REPEATED" if size is None or size > 1 else "NULLABLE"})
        fields.append({"name": INPUTS_FIELD, "type": "RECORD", "mode": "NULLABLE", "fields": inputs})
    if with_source:
        fields.append(SOURCE_SCHEMA)
    if with_versions:
        fields.append({"name": MODEL_VERSIONS_FIELD, "type": "RECORD", "mode": "NULLABLE", "fields": [
            {"name": node.name, "type": "STRING", "mode": "NULLABLE"} for node in graph.nodes]})
    return {"fields": fields}


def _flat(value: Any) -> List[Any]:
    if isinstance(value, list):
        return [v for item in value for v in _flat(item)]
    return [value]


def _fit(value: Any, field: Mapping[str, Any]) -> Any:
    if value is None:
        return None
    if field["type"] == "RECORD":
        return fit_record(value, field["fields"]) if isinstance(value, Mapping) else None
    if field["mode"] == "REPEATED":
        return [_scalar(v, field) for v in _flat(value)]
    if isinstance(value, list):  # a one-value list for a scalar column (passthrough)
        return _scalar(value[0], field) if len(value) == 1 else str(value)
    return _scalar(value, field)


def _scalar(value: Any, field: Mapping[str, Any]) -> Any:
    if isinstance(value, Mapping) and "b64" in value:  # bytes that are not UTF-8, as base64 text
        return value["b64"]
    if field["type"] == "STRING" and not isinstance(value, str):
        return str(value)
    return value


def fit_record(row: Mapping[str, Any], fields: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """A JSON-ready row (transforms.records.rows values) shaped for the schema's fields; unknown keys dropped."""
    return {f["name"]: _fit(row[f["name"]], f) for f in fields if f["name"] in row}
