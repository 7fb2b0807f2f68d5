"""Output ranks a SignatureDef leaves unknown, asked of the model itself (launcher side).

Sinks with a schema (Parquet, BigQuery) need each output's rank. TF1 graphs built around sparse
ops (Estimator-style parses of VarLen features) often export outputs whose rank the SignatureDef
does not record, though every call gives the same one. Before such a job starts, the model is
called on two golden examples of its feature spec through its own engine (the load a local run
makes anyway) and the ranks it returns fill the gaps. Every dimension after the batch found so is
taken as variable (a list column), never as the size one call happened to give.
"""

import dataclasses
from typing import Tuple

import numpy as np

from transforms.graph.model import GraphNode, ModelGraph
from transforms.scoring.engines import load_batch_call
from transforms.sinks.output_columns import SchemaError

PROBE_EXAMPLES = 2


def probed_output_specs(node: GraphNode) -> Tuple:
    """The node's output specs with each unknown rank found by calling the model (SchemaError
    naming the outputs when the call fails)."""
    specs = node.model.output_specs
    unknown = [name for name, _, shape in specs if shape is None]
    if not unknown:
        return specs
    from models.serving.examples import golden_records

    try:
        records = golden_records(node.model.feature_spec, PROBE_EXAMPLES)
        outputs = load_batch_call(node.engine, node.model.path, node.model.signature,
                                  feature_spec=node.model.engine_spec)(records)
    except Exception as e:  # pylint: disable=broad-except  # the schema cannot be made: say why
        raise SchemaError(f"model {node.name!r}: the signature leaves the rank of outputs {unknown} unknown, "
                          f"and calling the model on {PROBE_EXAMPLES} examples of its feature spec to find it "
                          f"failed: {type(e).__name__}: {e}") from e
    return tuple((name, dtype, (-1,) * np.asarray(outputs[name]).ndim if shape is None and name in outputs
                  else shape) for name, dtype, shape in specs)


def with_output_ranks(graph: ModelGraph) -> ModelGraph:
    """The graph with every output's rank known (models whose signatures know them: as they are)."""
    nodes = []
    for node in graph.nodes:
        specs = probed_output_specs(node)
        if specs != node.model.output_specs:
            node = dataclasses.replace(node, model=dataclasses.replace(node.model, output_specs=specs))
        nodes.append(node)
    return dataclasses.replace(graph, nodes=tuple(nodes))
