"""The ops a SavedModel's graph uses, read from saved_model.pb alone, and which of them this
TensorFlow registers.

A graph names ops by type; the kernels behind some live in other packages' shared libraries
(tensorflow-text's NormalizeUTF8, YDF's SimpleMLInferenceOpWithHandle), registered only once that
package is imported. Loading a model whose ops are not registered fails with "Op type not
registered"; reading the op names first lets a job import what registers them, or say what to install.
"""

from typing import Iterable, List, Set


def graph_op_names(meta_graph) -> Set[str]:
    """Every op type in the meta graph: its nodes and the nodes of every function in its library
    (TF2 exports keep almost the whole model in functions)."""
    graph = meta_graph.graph_def
    names = {node.op for node in graph.node}
    for function in graph.library.function:
        names.update(node.op for node in function.node_def)
    # a node whose op is a library function calls that function, not a registered op
    return names - {function.signature.name for function in graph.library.function}


def unregistered_ops(op_names: Iterable[str]) -> List[str]:
    """The op types no library loaded in this process registers (sorted)."""
    from tensorflow.python.framework import op_def_registry

    return sorted(name for name in set(op_names) if op_def_registry.get(name) is None)


def non_core_ops(op_names: Iterable[str]) -> List[str]:
    """The op types that stock TensorFlow does not define (sorted): those of op libraries, loaded
    in this process or not. Core ops are the ones with a generated wrapper in tf.raw_ops; ops
    loaded with tf.load_op_library (tensorflow-text's, YDF's) never get one."""
    import tensorflow as tf

    return sorted(name for name in set(op_names) if not hasattr(tf.raw_ops, name))
