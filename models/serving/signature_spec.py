"""Reading the feature spec back from the parsing op inside a serving signature.

For SavedModels we did not export (a TFX Trainer's, or hand-written as in TF tutorials) there is
no feature_spec.json beside the model: the spec is in the ParseExample(V2) op the signature runs,
possibly nested in functions (TF2 exports call the graph through StatefulPartitionedCall).
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from models.serving.contract import serving_meta_graph
from models.serving.feature_spec import Feature, FeatureSpec, FeatureSpecError, make_spec, storage_dtype_for

_PARSE_OPS = ("ParseExampleV2", "ParseExample")
_FUNCTION_ATTRS = ("f", "then_branch", "else_branch", "body", "cond")


def _function_calls(node) -> List[str]:
    names = []
    for attr in _FUNCTION_ATTRS:
        if attr in node.attr and node.attr[attr].func.name:
            names.append(node.attr[attr].func.name)
    return names


_PASS_THROUGH_OPS = ("Identity", "Reshape", "Squeeze", "ExpandDims")


def _const_value(nodes: Dict[str, object], ref: str) -> np.ndarray:
    """The constant behind a parse-op argument; tf.io.parse_example wraps list defaults in a Reshape."""
    node = nodes.get(ref.lstrip("^").split(":")[0])
    while node is not None and node.op in _PASS_THROUGH_OPS:
        node = nodes.get(node.input[0].lstrip("^").split(":")[0])
    if node is None or node.op != "Const":
        raise FeatureSpecError(f"parse op argument {ref} is not a constant")
    return tf.make_ndarray(node.attr["value"].tensor)


def _keys(nodes, ref) -> List[str]:
    return [k.decode() for k in np.atleast_1d(_const_value(nodes, ref))]


def _varlen_features(node, nodes) -> List[Feature]:
    """The sparse (VarLenFeature) and ragged features of one ParseExample(V2) node."""
    attr = node.attr
    if node.op == "ParseExampleV2":
        sparse_keys = _keys(nodes, node.input[2]) if attr["num_sparse"].i else []
        ragged_keys = _keys(nodes, node.input[4]) if attr["ragged_value_types"].list.type else []
        dtypes = list(attr["sparse_types"].list.type) + list(attr["ragged_value_types"].list.type)
    else:
        n_sparse = attr["Nsparse"].i
        sparse_keys = [_const_value(nodes, r).item().decode() for r in node.input[2:2 + n_sparse]]
        ragged_keys = []
        dtypes = list(attr["sparse_types"].list.type)
    return [Feature(name=key, dtype=storage_dtype_for(tf.as_dtype(dtype).name), varlen=True)
            for key, dtype in zip(sparse_keys + ragged_keys, dtypes)]


def _features_of(node, nodes) -> List[Feature]:
    """The features one ParseExample(V2) node reads: dense ones with their shapes and defaults,
    sparse and ragged ones (and dense ones of unknown length) as variable-length."""
    attr = node.attr
    dtypes = [tf.as_dtype(t).name for t in attr["Tdense"].list.type]
    shapes = [tuple(d.size for d in s.dim) for s in attr["dense_shapes"].list.shape]
    if node.op == "ParseExampleV2":
        keys = _keys(nodes, node.input[3]) if dtypes else []
        default_refs = list(node.input[5:5 + len(keys)])
    else:
        n_sparse = attr["Nsparse"].i
        n_dense = attr["Ndense"].i
        key_refs = node.input[2 + n_sparse: 2 + n_sparse + n_dense]
        keys = [_const_value(nodes, r).item().decode() for r in key_refs]
        default_refs = list(node.input[2 + n_sparse + n_dense: 2 + n_sparse + 2 * n_dense])
    features = _varlen_features(node, nodes)
    for key, dtype, shape, default_ref in zip(keys, dtypes, shapes, default_refs):
        if any(d < 0 for d in shape):  # FixedLenSequenceFeature: any number of rows
            features.append(Feature(name=key, dtype=storage_dtype_for(dtype), varlen=True))
            continue
        default = _const_value(nodes, default_ref)
        default_value = None
        if default.size:
            default_value = [v.decode() if isinstance(v, bytes) else v for v in default.reshape(-1).tolist()]
            if not shape:
                default_value = default_value[0]
        features.append(Feature(name=key, dtype=storage_dtype_for(dtype), shape=shape,
                                default=default_value))
    return features


def parse_ops(meta_graph, signature_name: str) -> List[Tuple[object, Dict[str, object]]]:
    """(node, the nodes of its graph or function) of every ParseExample(V2) op the signature's
    outputs depend on, looking into the functions they call."""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    found: List[Tuple[object, Dict[str, object]]] = []
    seen_functions = set()

    def visit(nodes: Dict[str, object], start: List[str]):
        stack, seen = list(start), set()
        while stack:
            name = stack.pop().lstrip("^").split(":")[0]
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node = nodes[name]
            if node.op in _PARSE_OPS:
                found.append((node, nodes))
            for fname in _function_calls(node) + ([node.op] if node.op in library else []):
                if fname not in seen_functions and fname in library:
                    seen_functions.add(fname)
                    fn = library[fname]
                    visit({n.name: n for n in fn.node_def}, list(fn.ret.values()))
            stack.extend(node.input)

    signature = meta_graph.signature_def[signature_name]
    visit({n.name: n for n in meta_graph.graph_def.node}, [t.name for t in signature.outputs.values()])
    return found


def examples_input(export_dir: str, signature_name: str = "serving_default") -> Optional[str]:
    """The name of the signature's input when it takes serialized tf.Example (one DT_STRING input
    and a parse op behind its outputs); None when it takes anything else (dense tensors, raw text)."""
    meta_graph = serving_meta_graph(export_dir)
    signature = meta_graph.signature_def.get(signature_name)
    if signature is None or len(signature.inputs) != 1:
        return None
    name, info = next(iter(signature.inputs.items()))
    if info.dtype != tf.string.as_datatype_enum or not parse_ops(meta_graph, signature_name):
        return None
    return name


def spec_from_signature(export_dir: str, signature_name: str = "serving_default") -> FeatureSpec:
    """The features the signature's parse ops read (the first op to name a feature wins)."""
    meta_graph = serving_meta_graph(export_dir)
    if signature_name not in meta_graph.signature_def:
        raise FeatureSpecError(f"{export_dir} has no signature {signature_name!r}")
    found = parse_ops(meta_graph, signature_name)
    if not found:
        raise FeatureSpecError(
            f"signature {signature_name!r} of {export_dir} parses no tf.Example (no ParseExample op); "
            "give its feature spec to the jobs (batch_infer/stream_infer --feature_spec [NAME=]FILE) or "
            "write it to the export's assets.extra/feature_spec.json")
    features = []
    for node, nodes in found:
        for feature in _features_of(node, nodes):
            if feature.name not in {f.name for f in features}:
                features.append(feature)
    return make_spec(features)
