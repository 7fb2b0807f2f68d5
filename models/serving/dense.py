"""Signatures that take tensors (a Keras model.export(), a TF2 module, a TF1 placeholder export)
rather than one string input of serialized tf.Example: their feature spec, and the step that turns
a batch of records into their inputs.

The records stay tf.Examples up to the model (every source, dead letter and sink reads them the
same way); the engine parses a batch once with the spec and feeds each input the feature of its
name, cast to the input's dtype. The spec comes from the signature: one feature per input, named
as the input, of its per-example shape (the batch axis dropped). An input of one unknown trailing
size ([None, None]) is a variable-length feature; a batch of such records is called once per
length, so no value is padded. A --feature_spec entry overrides an input's feature (its default,
a fixed shape for unknown sizes, "encoding": "raw" for a tensor stored as its bytes, or another
feature name with "input": the input it feeds).
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from models.serving.contract import serving_meta_graph
from models.serving.feature_spec import RAW, Feature, FeatureSpec, FeatureSpecError, make_spec, storage_dtype_for
from models.serving.signature_spec import parse_ops

# (dtype name, shape with None for unknown sizes; None for an unknown rank)
TensorInfo = Tuple[str, Optional[Tuple[Optional[int], ...]]]

_TF_EXAMPLE_HINT = ("or re-export it with python -m models.prepare for a serving signature of serialized "
                    "tf.Example")


def tensor_kind(info) -> Tuple[str, int]:
    """(kind, dtype enum of the values) of a SignatureDef TensorInfo."""
    encoding = info.WhichOneof("encoding")
    if encoding == "coo_sparse":
        return "sparse", info.dtype
    if encoding == "composite_tensor":
        from tensorflow.core.protobuf import struct_pb2

        spec = info.composite_tensor.type_spec
        name = struct_pb2.TypeSpecProto.TypeSpecClass.Name(spec.type_spec_class)
        components = info.composite_tensor.components
        dtype = components[0].dtype if components else info.dtype
        return ("ragged" if name == "RAGGED_TENSOR_SPEC" else spec.type_spec_class_name or name), dtype
    return "dense", info.dtype


def dtype_name(dtype_enum: int) -> str:
    import tensorflow as tf

    try:
        return tf.as_dtype(dtype_enum).name
    except TypeError:  # DT_INVALID: a composite tensor's TensorInfo has no dtype of its own
        return ""


# what a job calls a tensor_kind other than dense, in place of a dtype (an input it cannot feed)
COMPOSITE = {"sparse": "SparseTensor", "ragged": "RaggedTensor"}
_OTHER_COMPOSITE = " composite tensor"


def is_composite(dtype: str) -> bool:
    """Whether tensor_info's dtype names a sparse or composite tensor rather than a dtype."""
    return dtype in COMPOSITE.values() or dtype.endswith(_OTHER_COMPOSITE)


def tensor_info(info) -> TensorInfo:
    """A SignatureDef TensorInfo as (dtype name, shape); a sparse or composite one as (what it
    is, None)."""
    kind, dtype = tensor_kind(info)
    if kind != "dense":
        return COMPOSITE.get(kind, f"{kind}{_OTHER_COMPOSITE}"), None
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in shape.dim)
    return dtype_name(dtype), dims


_EXAMPLE_OPS = ("ParseSingleExample", "ParseSequenceExample", "ParseSequenceExampleV2",
                "ParseSingleSequenceExample")


def takes_examples(meta_graph, signature: str, has_spec: bool = False) -> bool:
    """Whether the signature takes serialized tf.Example: one string input, and a parse op behind
    its outputs (or anywhere in the graph, for the single-example parses), or a feature spec
    beside it (has_spec: assets.extra/feature_spec.json, or a --feature_spec that does not feed
    the input itself). Any other signature takes tensors: a lone string input without any of
    these takes raw strings (text for a tokenizer, say)."""
    from models.serving.graph_ops import graph_op_names

    sig = meta_graph.signature_def[signature]
    if len(sig.inputs) != 1:
        return False
    (info,) = sig.inputs.values()
    if tensor_info(info)[0] != "string":
        return False
    return has_spec or bool(parse_ops(meta_graph, signature)) or bool(
        graph_op_names(meta_graph) & set(_EXAMPLE_OPS))


def signature_inputs(export_dir: str, signature: str, overrides: Sequence[Feature] = ()) -> Dict[str, TensorInfo]:
    """{input name: (dtype, shape)} of a signature that takes tensors; {} when it takes serialized
    tf.Example. overrides: the --feature_spec entries, if any."""
    import tensorflow as tf

    from models.serving.feature_spec import SPEC_FILE

    meta_graph = serving_meta_graph(export_dir)
    if signature not in meta_graph.signature_def:
        raise FeatureSpecError(f"{export_dir} has no signature {signature!r}")
    inputs = {name: tensor_info(info) for name, info in sorted(meta_graph.signature_def[signature].inputs.items())}
    spec_beside = tf.io.gfile.exists(f"{export_dir.rstrip('/')}/{SPEC_FILE}")
    feeds_inputs = any(f.model_input in inputs for f in overrides)
    if takes_examples(meta_graph, signature, has_spec=spec_beside or (bool(overrides) and not feeds_inputs)):
        return {}
    return inputs


def _input_feature(name: str, dtype: str, shape: Optional[Tuple[Optional[int], ...]]) -> Feature:
    if is_composite(dtype):
        raise FeatureSpecError(f"input {name!r} is a {dtype}: records cannot feed it as they are; export a "
                               "signature that takes serialized tf.Example and parses it (a tf.io.VarLenFeature "
                               "or RaggedFeature parse gives the model that tensor)")
    if shape is None:
        raise FeatureSpecError(f"input {name!r} has an unknown rank: give its shape with --feature_spec")
    if not shape:
        raise FeatureSpecError(f"input {name!r} has shape []: no batch axis, so records cannot be batched")
    per_example = shape[1:]
    storage = storage_dtype_for(dtype)
    if all(d is not None for d in per_example):
        return Feature(name=name, dtype=storage, shape=tuple(per_example), model_dtype=dtype)
    if len(per_example) == 1:  # [None, None]: any number of values per record
        return Feature(name=name, dtype=storage, model_dtype=dtype, varlen=True)
    raise FeatureSpecError(
        f"input {name!r} has shape {[d if d is not None else None for d in shape]}: only its batch axis "
        "and, for a rank-2 input, its last axis may be unknown; give its per-example shape with --feature_spec")


def _fits_input(feature: Feature, name: str, dtype: str, shape) -> None:
    """Raises when an override cannot feed the input (rank or a fixed size differs)."""
    if feature.varlen:
        if shape is not None and len(shape) != 2:
            raise FeatureSpecError(f"feature {feature.name!r}: a variable-length feature feeds rank-2 inputs only; "
                                   f"input {name!r} has rank {len(shape)}")
        return
    if shape is None:
        return
    fixed = tuple(feature.shape)
    if len(fixed) != len(shape) - 1 or any(d is not None and d != f for d, f in zip(shape[1:], fixed)):
        raise FeatureSpecError(f"feature {feature.name!r}: shape {list(fixed)} does not fit input {name!r} "
                               f"of shape {[d for d in shape]}")


def tensor_input_spec(inputs: Mapping[str, TensorInfo], overrides: Sequence[Feature] = ()) -> FeatureSpec:
    """The feature spec of a signature's tensor inputs: derived from each input, or the override
    that feeds it (matched by the input it feeds: its "input", else its name). Overrides must
    each feed an input; the derived model dtype stays the input's."""
    by_input = {}
    for feature in overrides:
        if feature.model_input not in inputs:
            raise FeatureSpecError(f"feature spec entry {feature.name!r} feeds {feature.model_input!r}, which is not "
                                   f"an input of the signature {sorted(inputs)}")
        by_input[feature.model_input] = feature
    features = []
    for name, (dtype, shape) in inputs.items():
        override = by_input.get(name)
        if override is None:
            features.append(_input_feature(name, dtype, shape))
            continue
        if override.preprocess is not None:
            raise FeatureSpecError(f"feature {override.name!r}: preprocessing needs a tf.Example signature "
                                   f"({_TF_EXAMPLE_HINT})")
        _fits_input(override, name, dtype, shape)
        if override.encoding == RAW:  # the tensor's bytes in one value (images): decoded as the input's dtype
            if override.model_dtype not in (None, dtype):
                raise FeatureSpecError(f"feature {override.name!r}: raw {override.model_dtype} cannot feed input "
                                       f"{name!r} of dtype {dtype}")
        elif (override.dtype == "string") != (dtype == "string"):
            raise FeatureSpecError(f"feature {override.name!r}: dtype {override.dtype} cannot feed input {name!r} "
                                   f"of dtype {dtype}")
        features.append(dataclasses.replace(override, model_dtype=dtype))
    return make_spec(features)


def tensor_parse_config(spec: FeatureSpec) -> Dict[str, object]:
    """tf.io.parse_example's config: fixed-shape features as FixedLenFeature (defaults filling
    missing ones; a raw-encoded one as its one bytes value), variable-length ones ragged."""
    import tensorflow as tf

    config = {}
    for f in spec:
        dtype = tf.as_dtype(f.dtype)
        config[f.name] = tf.io.RaggedFeature(dtype) if f.varlen else \
            tf.io.FixedLenFeature(list(f.stored_shape), dtype, default_value=f.default)
    return config


class TensorInputs:
    """Serialized tf.Examples -> the signature's input tensors, in groups of records that batch
    together (all of them, unless variable-length inputs hold values of different lengths)."""

    def __init__(self, spec: FeatureSpec, input_names: Sequence[str]):
        self.features = [f for f in spec if f.model_input in set(input_names)]
        missing = sorted(set(input_names) - {f.model_input for f in self.features})
        if missing:
            raise FeatureSpecError(f"no feature feeds inputs {missing}")
        self._config = tensor_parse_config(self.features)
        self._varlen = [f for f in self.features if f.varlen]

    def parse(self, serialized) -> Dict[str, object]:
        """{input name: tensor} of the whole batch; variable-length inputs as RaggedTensors."""
        import tensorflow as tf

        parsed = tf.io.parse_example(serialized, self._config)
        inputs = {}
        for f in self.features:
            value = parsed[f.name]
            if f.encoding == RAW:
                value = tf.reshape(tf.io.decode_raw(value, f.model_dtype), [-1, *f.shape])
            elif f.input_dtype == "bool":
                value = tf.not_equal(value, 0)
            elif f.input_dtype != f.dtype:
                value = tf.cast(value, f.input_dtype)
            inputs[f.model_input] = value
        return inputs

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> Optional[Dict[str, np.ndarray]]:
        """What parse gives, from each feature's values already parsed (a columnar source's
        arrays: [n, *stored shape] of the storage dtype); None when one is missing or of another
        shape or dtype, or an input takes variable lengths (then the records are parsed)."""
        if not self.fixed:
            return None
        inputs = {}
        for f in self.features:
            value = arrays.get(f.name)
            dtype = object if f.dtype == "string" else np.dtype(f.dtype)
            if value is None or value.shape[1:] != tuple(f.stored_shape) or value.dtype != dtype:
                return None
            if f.encoding == RAW:  # each value holds exactly the tensor's bytes (checked where it was read)
                value = np.frombuffer(b"".join(value.tolist()), dtype=f.model_dtype).reshape((-1,) + tuple(f.shape))
            elif f.input_dtype == "bool":
                value = value != 0
            elif f.input_dtype != f.dtype:
                value = value.astype(f.input_dtype)
            inputs[f.model_input] = value
        return inputs

    @property
    def fixed(self) -> bool:
        """Whether every input has a fixed per-example shape (one group per batch, always)."""
        return not self._varlen

    def groups(self, inputs: Mapping[str, object]) -> List[Tuple[np.ndarray, Dict[str, object]]]:
        """(positions, dense inputs) per group of records whose variable-length values have the
        same lengths; one group holding every position when they all do."""
        import tensorflow as tf

        lengths = np.stack([inputs[f.model_input].row_lengths().numpy() for f in self._varlen], axis=1)
        distinct, group_of = np.unique(lengths, axis=0, return_inverse=True)
        groups = []
        for g in range(len(distinct)):
            positions = np.flatnonzero(group_of.reshape(-1) == g)
            taken = {name: tf.gather(value, positions) if len(distinct) > 1 else value
                     for name, value in inputs.items()}
            groups.append((positions, {name: value.to_tensor() if isinstance(value, tf.RaggedTensor) else value
                                       for name, value in taken.items()}))
        return groups


def scatter_outputs(n: int, parts: Sequence[Tuple[np.ndarray, Mapping[str, np.ndarray]]]) -> Dict[str, np.ndarray]:
    """The outputs of each group's call put back in record order: [n, ...] arrays, or object
    arrays of per-record values where groups give outputs of different trailing shapes."""
    names = parts[0][1].keys()
    outputs = {}
    for name in names:
        pieces = [(positions, np.asarray(out[name])) for positions, out in parts]
        for positions, piece in pieces:
            if piece.ndim == 0 or piece.shape[0] != len(positions):
                from models.serving.results import OutputBatchError

                raise OutputBatchError(f"output {name!r} has shape {list(piece.shape)} for a batch of "
                                       f"{len(positions)}: it has no row per input")
        trailing = {piece.shape[1:] for _, piece in pieces}
        if len(trailing) == 1:
            column = np.empty((n,) + pieces[0][1].shape[1:], dtype=pieces[0][1].dtype)
        else:
            column = np.empty(n, dtype=object)
        for positions, piece in pieces:
            if column.dtype == object and len(trailing) > 1:
                for position, row in zip(positions, piece):
                    column[position] = row
            else:
                column[positions] = piece
        outputs[name] = column
    return outputs


def inputs_problem(export_dir: str, signature: str) -> Optional[str]:
    """Why the tfx-bsl engine cannot run a signature that takes tensors, with the ways out; None
    for a signature of serialized tf.Example."""
    try:
        inputs = signature_inputs(export_dir, signature)
    except ValueError:  # no such signature, no serving meta graph: other checks say so
        return None
    if not inputs:
        return None
    shown = ", ".join(f"{name} {dtype}{list(shape) if shape is not None else '[?]'}"
                      for name, (dtype, shape) in inputs.items())
    return (f"signature {signature!r} takes tensors ({shown}), not serialized tf.Example; tfx-bsl's "
            f"RunInference feeds a signature exactly one string input of serialized tf.Example "
            f"(tensorflow/tfx-bsl#29): score it with --engine fast, {_TF_EXAMPLE_HINT}")
