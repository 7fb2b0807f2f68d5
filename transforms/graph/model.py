"""Model graphs: named models wired in parallel and in sequence, checked before a job starts.

A node is one model. A node without inputs reads the records themselves (a root); several roots
run in parallel on the same records. A node with inputs is fed by other nodes: each of its
bridges sets one of its features from one output of an earlier node, and every other feature it
reads still comes from the original record ("original input features stay available"). The
graph is a DAG; every node's outputs land in the prediction row under its name.

check_graph rejects, naming the node and the edge: unknown models, cycles, reserved or repeated
names, bridges to features the model does not read, and outputs whose dtype or shape cannot fill
the feature.
"""

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from models.serving.contract import tfx_bsl_output_problems
from models.serving.dense import inputs_problem
from models.serving.feature_spec import RAW, Feature
from models.serving.model import ServingModel
from models.serving.preprocess_spec import IMAGE
from models.serving.engines import DEFAULT_ENGINE, ENGINES, TFX_BSL_ENGINE
from transforms.graph.postprocessors import PostprocessError, check_steps
from transforms.records.rows import INPUTS_FIELD, KEY_FIELD, MODEL_VERSIONS_FIELD, SOURCE_FIELD

# Model names that would collide with a field of a one-row-per-key row.
RESERVED_NAMES = (KEY_FIELD, INPUTS_FIELD, SOURCE_FIELD, MODEL_VERSIONS_FIELD)

_STORAGE_OF_OUTPUT = {"f": "float32", "i": "int64", "u": "int64", "b": "int64"}


class GraphError(ValueError):
    """A graph that cannot run; raised before the pipeline starts, naming the node and edge."""


@dataclasses.dataclass(frozen=True)
class Bridge:
    """feature (of the node it belongs to) <- source.output."""
    feature: str
    source: str
    output: str

    def __str__(self):
        return f"{self.source}.{self.output} -> {self.feature}"


@dataclasses.dataclass(frozen=True)
class GraphNode:
    model: ServingModel
    engine: str = DEFAULT_ENGINE
    bridges: Tuple[Bridge, ...] = ()
    postprocess: Tuple[Any, ...] = ()  # transforms.graph.postprocessors steps, applied in order

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def sources(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(b.source for b in self.bridges))


@dataclasses.dataclass(frozen=True)
class ModelGraph:
    nodes: Tuple[GraphNode, ...]  # in topological order (check_graph sorts them)
    passthrough: Tuple[str, ...] = ()  # input features copied into each row under "inputs"

    @property
    def names(self) -> List[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> GraphNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def passthrough_scalars(self) -> Dict[str, Optional[bool]]:
        """Per passthrough feature: scalar when a model reads it with shape [], list when with a
        shape, None (a single value becomes a scalar) when no model reads it."""
        scalars: Dict[str, Optional[bool]] = {}
        for node in self.nodes:
            for feature in node.model.feature_spec:
                if feature.name in self.passthrough and feature.name not in scalars:
                    scalars[feature.name] = feature.stored_shape == () and not feature.varlen
        return scalars

    def describe(self) -> str:
        lines = []
        for n in self.nodes:
            feeds = ", ".join(str(b) for b in n.bridges) or "the records"
            lines.append(f"{n.name} = {n.model.path} ({n.engine} engine) <- {feeds}")
        return "\n".join(lines)


def output_spec(model: ServingModel, output: str) -> Optional[Tuple[str, Optional[Tuple[int, ...]]]]:
    for name, dtype, shape in model.row_output_specs():
        if name == output:
            return dtype, shape
    return None


def bridge_problem(output_dtype: str, output_shape: Optional[Tuple[int, ...]], feature: Feature
                   ) -> Optional[str]:
    """Why an output (dtype, shape with batch axis) cannot fill a feature, or None if it can.

    dtypes: float outputs fill float32 features, integer and bool outputs int64, strings string.
    shapes: the per-record value count must equal the feature's (a reshape, never padding).
    Unknown sizes are checked per record at run time instead (a convert dead letter).
    """
    import numpy as np

    if feature.encoding == RAW:
        return f"feature {feature.name!r} is raw-encoded bytes; a bridge cannot fill it"
    kind = "S" if output_dtype == "string" else np.dtype(output_dtype).kind
    storage = "string" if kind == "S" else _STORAGE_OF_OUTPUT.get(kind)
    if storage != feature.dtype:
        return f"output is {output_dtype} but feature {feature.name!r} stores {feature.dtype}"
    if output_shape is None or len(output_shape) == 0:
        return None if output_shape is None else "output has no batch axis"
    per_record = output_shape[1:]
    if any(d < 0 for d in per_record):
        return None
    if feature.varlen:  # takes any number of values
        return None
    if math.prod(per_record) != feature.size:
        return (f"output has shape {list(per_record)} per record ({math.prod(per_record)} values) but "
                f"feature {feature.name!r} has shape {list(feature.shape)} ({feature.size} values)")
    return None


def auto_bridges(previous: ServingModel, following: ServingModel) -> Tuple[Bridge, ...]:
    """The implicit bridge of a chain step: the one output of previous -> the one feature of following."""
    features = [f for f in following.feature_spec]
    if len(features) != 1 or len(previous.outputs) != 1:
        raise GraphError(
            f"cannot chain {previous.name!r} -> {following.name!r} automatically: that needs exactly one "
            f"output ({previous.name!r} has {list(previous.outputs)}) and exactly one feature "
            f"({following.name!r} reads {[f.name for f in features]}); map them in a graph file, e.g. "
            f"inputs: {{{features[0].name if features else 'feature'}: {previous.name}.OUTPUT}}")
    return (Bridge(features[0].name, previous.name, previous.outputs[0]),)


def _check_node(node: GraphNode, nodes: Dict[str, GraphNode]) -> List[str]:
    problems = []
    if node.engine not in ENGINES:
        problems.append(f"model {node.name!r}: engine {node.engine!r} is not one of {', '.join(ENGINES)}")
    elif node.engine == TFX_BSL_ENGINE:
        reasons = ([inputs_problem(node.model.path, node.model.signature)] if node.model.input_tensors else []) \
            + list(node.model.tf1_loader_problems) \
            + tfx_bsl_output_problems(node.model.method, node.model.output_specs)
        problems += [f"model {node.name!r} at {node.model.path}: the {TFX_BSL_ENGINE} engine cannot run it: {p}"
                     for p in reasons]
    features = {f.name: f for f in node.model.feature_spec}
    seen = set()
    for bridge in node.bridges:
        edge = f"model {node.name!r}, input {bridge}"
        if bridge.feature in seen:
            problems.append(f"{edge}: feature {bridge.feature!r} is fed twice")
        seen.add(bridge.feature)
        if bridge.source not in nodes:
            problems.append(f"{edge}: unknown model {bridge.source!r} (models: {sorted(nodes)})")
            continue
        if bridge.feature not in features:
            problems.append(f"{edge}: {node.name!r} reads no feature {bridge.feature!r} "
                            f"(it reads {sorted(features)})")
            continue
        source = nodes[bridge.source].model
        spec = output_spec(source, bridge.output)
        if bridge.output not in source.outputs or spec is None:
            problems.append(f"{edge}: {bridge.source!r} has no output {bridge.output!r} "
                            f"(outputs: {list(source.outputs)})")
            continue
        problem = bridge_problem(spec[0], spec[1], features[bridge.feature])
        if problem:
            problems.append(f"{edge}: {problem}")
    problems.extend(_check_steps(node))
    return problems


def _check_steps(node: GraphNode) -> List[str]:
    """The post-processing steps, checked on the model's output dtypes and shapes (see check_steps)."""
    specs = {name: (dtype, None if shape is None else tuple(shape[1:]))
             for name, dtype, shape in node.model.row_output_specs()}
    try:
        check_steps(node.postprocess, specs)
    except PostprocessError as e:
        return [f"model {node.name!r}: {e}"]
    return []


def _topological(nodes: Sequence[GraphNode]) -> List[GraphNode]:
    """Kahn's algorithm, stable in the given order; raises GraphError naming a cycle."""
    by_name = {n.name: n for n in nodes}
    order, placed = [], set()
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(s in placed for s in n.sources)]
        if not ready:
            raise GraphError("the graph has a cycle: " + _cycle(pending, by_name))
        for n in ready:
            order.append(n)
            placed.add(n.name)
        pending = [n for n in pending if n.name not in placed]
    return order


def _cycle(pending: Sequence[GraphNode], by_name: Dict[str, GraphNode]) -> str:
    path, current = [], pending[0]
    while current.name not in path:
        path.append(current.name)
        current = by_name[next(s for s in current.sources if s in {p.name for p in pending})]
    loop = path[path.index(current.name):] + [current.name]
    return " -> ".join(reversed(loop))


def check_graph(graph: ModelGraph) -> ModelGraph:
    """The same graph with nodes in topological order; raises GraphError listing every problem."""
    if not graph.nodes:
        raise GraphError("a graph needs at least one model")
    names = graph.names
    problems = [f"model name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += [f"model name {n!r} is reserved for the prediction row" for n in names if n in RESERVED_NAMES]
    nodes = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        problems.extend(_check_node(node, nodes))
    if problems:
        raise GraphError("invalid model graph:\n  - " + "\n  - ".join(problems))
    return dataclasses.replace(graph, nodes=tuple(_topological(graph.nodes)))


def parallel_graph(models: Sequence[ServingModel], engine: str = DEFAULT_ENGINE,
                   passthrough: Sequence[str] = ()) -> ModelGraph:
    """Every model on the same records; one row per key with every model's outputs."""
    return check_graph(ModelGraph(tuple(GraphNode(m, engine) for m in models), tuple(passthrough)))


def chain_graph(models: Sequence[ServingModel], engine: str = DEFAULT_ENGINE,
                passthrough: Sequence[str] = ()) -> ModelGraph:
    """Models in the given order, each fed by the one before (implicit bridges, see auto_bridges)."""
    nodes = [GraphNode(models[0], engine)]
    for previous, following in zip(models, models[1:]):
        nodes.append(GraphNode(following, engine, auto_bridges(previous, following)))
    return check_graph(ModelGraph(tuple(nodes), tuple(passthrough)))


def record_spec(graph: ModelGraph) -> Tuple[Feature, ...]:
    """The features the input records must hold: every model's, less those bridged from another
    model. What a row-shaped source (JSON, CSV, BigQuery) converts its rows by."""
    features: Dict[str, Feature] = {}
    for node in graph.nodes:
        bridged = {b.feature for b in node.bridges}
        for feature in node.model.feature_spec:
            if feature.name in bridged:
                continue
            seen = features.setdefault(feature.name, feature)
            if (seen.dtype, seen.shape, seen.encoding) != (feature.dtype, feature.shape, feature.encoding):
                raise GraphError(f"models read feature {feature.name!r} in two ways: "
                                 f"{seen.dtype}{list(seen.shape)} and {feature.dtype}{list(feature.shape)}")
            if seen.default is not None and feature.default is None:
                features[feature.name] = feature  # required by one model: required for the record
    return tuple(features.values())


def takes_arrays(graph: ModelGraph) -> bool:
    """Whether a model of the graph takes tensors fed from the records alone (no bridged input):
    row-shaped sources then hand clean rows over as its feature arrays (InstanceOptions.bulk_arrays)."""
    return any(node.model.input_tensors and not node.bridges for node in graph.nodes)


def decodes_images(graph: ModelGraph) -> bool:
    """Whether a model of the graph decodes images inside its signature (an image feature's
    preprocessing): its batches are sized by what they hold once decoded."""
    return any(f.preprocess is not None and f.preprocess.kind == IMAGE
               for node in graph.nodes for f in node.model.feature_spec)


def feature_types(graph: ModelGraph) -> Dict[str, Tuple[str, Optional[int]]]:
    """feature -> (storage dtype, values per record; None when variable) of the record spec: the
    types of passthrough columns in sinks with a schema."""
    return {f.name: (f.dtype, None if f.varlen else f.size) for f in record_spec(graph)}
