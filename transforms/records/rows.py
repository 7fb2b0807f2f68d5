"""Pure conversion of per-example model outputs into JSON-ready prediction rows.

Shapes: an output of per-example shape [] becomes a scalar, [k] a list, [k, m] nested lists.
Types: a float32 value becomes the shortest decimal that reads back as the same float32
(0.6369617, not 0.6369616985321045; float16 is treated as float32); float64 stays as it is;
ints and bools stay;
byte strings become text when they are UTF-8, else {"b64": "<base64>"}. NaN and +/-inf, which
JSON cannot hold, become the strings "NaN", "Infinity", "-Infinity" (what BigQuery accepts).
"""

import base64
import math
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import orjson

KEY_FIELD = "key"


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


def prediction_row(key: str, per_model: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """{"key": key, "<model>": {"<output>": value}} for already JSON-ready model outputs."""
    row = {KEY_FIELD: key}
    for model_name, outputs in per_model.items():
        if model_name == KEY_FIELD:
            raise ValueError(f"a model cannot be named {KEY_FIELD!r}")
        row[model_name] = dict(outputs)
    return row
