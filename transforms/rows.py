"""Pure conversion of per-example model outputs into JSON-ready prediction rows.

Shapes: an output of per-example shape [] becomes a scalar, [k] a list, [k, m] nested lists.
Types: floats stay floats (float32 widened exactly to float64), ints stay ints, bools stay bools;
byte strings become text when they are UTF-8, else {"b64": "<base64>"}. NaN and +/-inf, which
JSON cannot hold, become the strings "NaN", "Infinity", "-Infinity" (what BigQuery accepts).
"""

import base64
import math
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

KEY_FIELD = "key"


def to_json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub" or (value.dtype.kind == "f" and np.isfinite(value).all()):
            return value.tolist()
        return [to_json_value(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (float, np.floating)):
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
