"""The columns a model contributes to a prediction row, for sinks with a schema (BigQuery, Parquet). Pure.

An output's dtype and per-record shape come from the model's SignatureDef, through its method's
rule (models.serving.results), after its post-processing: the steps run on all-zero outputs built
from those dtypes and shapes, so classify/regress/keep steps and user functions are covered
without a model call. They run twice, with every unknown dimension 1 and then 2; a dimension
that differs is variable (None) (if only the first run succeeds, every dimension is taken as
fixed). An unknown rank is a SchemaError here: the launcher asks the model for it first
(transforms.scoring.output_ranks).
"""

from typing import Dict, List, Optional, Tuple

import numpy as np

from transforms.graph.postprocessors import apply_steps

Shape = Tuple[Optional[int], ...]


class SchemaError(ValueError):
    """Outputs that cannot be given a column."""


def _zero_outputs(model, sink: str, unknown: int) -> Dict[str, np.ndarray]:
    outputs = {}
    for name, dtype, shape in model.row_output_specs():
        if shape is None:
            raise SchemaError(f"model {model.name!r}: output {name!r} has an unknown rank; "
                              f"{sink} needs a fixed column shape")
        dims = tuple(unknown if d < 0 else d for d in shape[1:])  # shape[0] is the batch
        outputs[name] = np.zeros((1,) + dims, dtype=object if dtype == "string" else dtype)
    return outputs


def _postprocessed(node, sink: str, unknown: int) -> Dict[str, np.ndarray]:
    try:
        return {k: np.asarray(v) for k, v in apply_steps(node.postprocess,
                                                         _zero_outputs(node.model, sink, unknown)).items()}
    except SchemaError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # a user step that rejects zeros
        raise SchemaError(f"model {node.name!r}: cannot derive the {sink} columns of its "
                          f"post-processed outputs ({type(e).__name__}: {e})") from e


def output_columns(node, sink: str = "the output") -> List[Tuple[str, np.dtype, Shape]]:
    """(output name, dtype, per-record shape with None for a variable dimension) of a graph node's
    post-processed outputs, sorted by name. sink names the writer in errors."""
    ones = _postprocessed(node, sink, 1)
    try:
        twos = _postprocessed(node, sink, 2)
    except SchemaError:  # a step that needs the unknown size to be what it is: take the shapes as fixed
        twos = ones
    columns = []
    for name in sorted(ones):
        one, two = ones[name].shape[1:], twos[name].shape[1:]
        shape = tuple(a if len(one) == len(two) and a == b else None for a, b in zip(one, two))
        columns.append((name, ones[name].dtype, shape))
    return columns
