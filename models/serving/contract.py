"""Static checks of a SavedModel against tfx-bsl's contract, read from saved_model.pb alone.

tfx-bsl accepts a signature with exactly one DT_STRING input and restores variables with the TF1
saver. A Keras 3 model wrapped in a tf.Module + @tf.function exports signatures that read
variable handles the saver never restores ("Could not find variable ..." at run time); here that
shows as VarHandleOps reachable from the signature outputs but not from the saver's restore op.
"""

from typing import Dict, List, Set

import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

SUPPORTED_METHODS = (
    tf.saved_model.PREDICT_METHOD_NAME,
    tf.saved_model.CLASSIFY_METHOD_NAME,
    tf.saved_model.REGRESS_METHOD_NAME,
)


def serving_meta_graph(export_dir: str):
    saved_model = loader_impl.parse_saved_model(export_dir)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == {tf.saved_model.SERVING}:
            return meta_graph
    raise ValueError(f"{export_dir} has no meta graph tagged exactly {{'serve'}}")


def _node_name(tensor_or_input: str) -> str:
    return tensor_or_input.lstrip("^").split(":")[0]


def _reachable(nodes: Dict[str, object], start: List[str]) -> Set[str]:
    seen, stack = set(), [_node_name(s) for s in start]
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        stack.extend(_node_name(i) for i in nodes[name].input)
    return seen


def unrestored_variables(meta_graph, signature_name: str) -> List[str]:
    """Variables the signature reads that the TF1 saver does not restore (empty when all are)."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    handles = {name for name, n in nodes.items() if n.op == "VarHandleOp"}
    if not handles:
        return []
    signature = meta_graph.signature_def[signature_name]
    read = _reachable(nodes, [t.name for t in signature.outputs.values()]) & handles
    restore_op = meta_graph.saver_def.restore_op_name
    restored = _reachable(nodes, [restore_op]) & handles if restore_op else set()
    return sorted(nodes[h].attr["shared_name"].s.decode() or h for h in read - restored)


PREPARE_HINT = " (re-export with models.prepare)"


def contract_problems(export_dir: str, signature_name: str = "serving_default", tf1_loader: bool = True,
                      prepare_hint: bool = True, tensor_inputs: bool = False) -> List[str]:
    """Everything that stops this signature from running; empty when it can. tf1_loader: include
    what stops tfx-bsl's TF1 session loader only (tf1_loader_problems); the fast engine loads with
    tf.saved_model.load, which restores what a tf.Module tracks. prepare_hint: a wrong input says
    to re-export with models.prepare (models.inspect says it once, on a line of its own).
    tensor_inputs: a signature that takes tensors is fine (the fast engine feeds them,
    models.serving.dense); without it, anything but one string input is a problem, as for tfx-bsl."""
    try:
        meta_graph = serving_meta_graph(export_dir)
    except Exception as e:
        return [f"cannot read {export_dir}: {e}"]
    if signature_name not in meta_graph.signature_def:
        return [f"no signature {signature_name!r}; the model has {sorted(meta_graph.signature_def)}"]
    signature = meta_graph.signature_def[signature_name]
    problems = [] if tensor_inputs else [
        p + (PREPARE_HINT if prepare_hint else "") for p in input_problems(signature_name, signature)]
    if signature.method_name not in SUPPORTED_METHODS:
        problems.append(f"signature method {signature.method_name!r} is not predict, classify or regress")
    problems += weights_problems(export_dir, meta_graph)
    if tf1_loader:
        problems += tf1_loader_problems(meta_graph, signature_name)
    return problems


def input_problems(signature_name: str, signature) -> List[str]:
    """Why the signature's inputs are not one DT_STRING input of serialized tf.Example (it takes
    dense tensors, say, as a Keras model.export() does); empty when they are."""
    inputs = dict(signature.inputs)
    if len(inputs) != 1:
        return [f"signature {signature_name!r} takes {len(inputs)} inputs {sorted(inputs)}; tfx-bsl needs "
                "exactly one DT_STRING input of serialized tf.Example"]
    name, info = next(iter(inputs.items()))
    if info.dtype != tf.string.as_datatype_enum:
        return [f"signature {signature_name!r} input {name!r} is {tf.as_dtype(info.dtype).name}; "
                "tfx-bsl needs a DT_STRING input of serialized tf.Example"]
    return []


def tf1_loader_problems(meta_graph, signature_name: str = "serving_default") -> List[str]:
    """What stops the TF1 session loader (tfx-bsl's engine) from running a signature that the TF2
    loader runs: variables the signature reads that the TF1 saver does not restore."""
    missing = unrestored_variables(meta_graph, signature_name)
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return [f"signature {signature_name!r} reads {len(missing)} variable(s) that the TF1 saver does "
            f"not restore ({shown}): tfx-bsl will fail with 'Could not find variable'. This is what a "
            "Keras 3 model wrapped in a tf.Module + @tf.function exports; the fast engine runs it, or "
            "export with models.prepare (keras.export.ExportArchive) for both engines"]


def tfx_bsl_output_problems(method_name: str, output_specs) -> List[str]:
    """Outputs tfx-bsl's predict handler fails on for every record: a string output of one value
    per record ([n]); it splits outputs per record and reads each part's dtype, which a plain
    bytes value lacks ("'bytes' object has no attribute 'dtype'", tfx_bsl/beam/run_inference.py).
    output_specs: (name, dtype name, shape) as ServingModel.output_specs."""
    from models.serving.methods import PREDICT, signature_method

    if signature_method(method_name) is not PREDICT:  # classify and regress logs are built otherwise
        return []
    return [f"output {name!r} is one string per record (shape {[d if d >= 0 else None for d in shape]}): "
            "tfx-bsl's predict handler fails on every record of such a signature ('bytes' object has no "
            "attribute 'dtype'); score it with --engine fast, or export the output as [None, 1]"
            for name, dtype, shape in output_specs if dtype == "string" and shape is not None and len(shape) == 1]


_VARIABLE_OPS = {"VarHandleOp", "VariableV2", "Variable"}


def weights_problems(export_dir: str, meta_graph) -> List[str]:
    """What is missing of the weights a model with variables needs: variables/variables.index
    and every variables.data-NNNNN-of-MMMMM shard, none of them empty (a partial copy of a
    version directory, say). Empty when the model has no variables or they are all there."""
    graph = meta_graph.graph_def
    if not any(n.op in _VARIABLE_OPS for n in graph.node) and not any(
            n.op in _VARIABLE_OPS for f in graph.library.function for n in f.node_def):
        return []
    directory = f"{export_dir.rstrip('/')}/variables"
    index = f"{directory}/variables.index"
    if not tf.io.gfile.exists(index):
        return [f"{directory}/variables.index is missing: the model's weights are not there (copy the whole "
                "version directory, variables/ included)"]
    shards = sorted(tf.io.gfile.glob(f"{directory}/variables.data-*-of-*"))
    if not shards:
        return [f"{directory} has no variables.data-* file: the model's weights are not there"]
    expected = int(shards[0].rsplit("-of-", 1)[1])
    if len(shards) < expected:
        return [f"{directory} has {len(shards)} of the {expected} variables.data shards"]
    empty = [path for path in [index] + shards if tf.io.gfile.stat(path).length == 0]
    if empty:
        return [f"{path} is empty (an interrupted copy?)" for path in empty]
    return []
