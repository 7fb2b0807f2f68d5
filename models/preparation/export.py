"""Export a model with a serialized-tf.Example `serving_default` signature.

The source is a Keras 3 model (`.keras` file or in-memory) or a SavedModel directory whose
signature takes dense tensors. The export goes through keras.export.ExportArchive, the one way
found to give a SavedModel that both tf.saved_model.load and tfx-bsl's TF1 session loader
restore (docs/ARCHITECTURE.md, "Export"). The dense signature stays as `serving_dense`.

The serving signature is parse (the feature spec) -> signature_body: in-graph preprocessing of
raw features (models.preparation.preprocessing), the model, the method's outputs (models.preparation.signature_methods),
and passthrough features copied to outputs of the same name. Verification calls the same body
eagerly on golden values as its reference.
"""

import dataclasses
import json
import os
import shutil
import uuid
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import tensorflow as tf

from models.serving import layout
from models.serving.feature_spec import (
    RAW, SPEC_FILE, Feature, FeatureSpec, FeatureSpecError, make_spec, spec_to_json, storage_dtype_for)
from models.serving.examples import parse_features

EXAMPLES_INPUT = "examples"
DENSE_SIGNATURE = "serving_dense"
SERVING_SIGNATURE = "serving_default"


@dataclasses.dataclass
class SourceModel:
    """A model in memory: a call on dense inputs, what to track for export, and its inputs."""

    call: Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]
    inputs: Dict[str, tf.TensorSpec]
    trackable: Any
    kind: str  # "keras" or "saved_model"


def _dtype_name(dtype: Any) -> str:
    return tf.as_dtype(dtype).name


def _keras_model_call(model) -> Callable:
    names = [t.name for t in model.inputs]
    output_names = list(getattr(model, "output_names", None) or [])

    def call(dense: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        inputs = dense[names[0]] if len(names) == 1 else {n: dense[n] for n in names}
        return _as_output_dict(model(inputs, training=False), output_names)

    return call


def _as_output_dict(outputs: Any, names: Sequence[str]) -> Dict[str, tf.Tensor]:
    if isinstance(outputs, Mapping):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        names = list(names) if len(names) == len(outputs) else [f"output_{i}" for i in range(len(outputs))]
        return dict(zip(names, outputs))
    return {names[0] if len(names) == 1 else "output_0": outputs}


def from_keras(model) -> SourceModel:
    inputs = {}
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        inputs[tensor.name] = tf.TensorSpec(shape, tensor.dtype, name=tensor.name)
    return SourceModel(call=_keras_model_call(model), inputs=inputs, trackable=model, kind="keras")


def from_saved_model(path: str, signature: str = SERVING_SIGNATURE) -> SourceModel:
    loaded = tf.saved_model.load(path)
    if signature not in loaded.signatures:
        raise ValueError(f"{path} has no signature {signature!r}; it has {sorted(loaded.signatures)}")
    fn = loaded.signatures[signature]
    _, kwargs = fn.structured_input_signature
    inputs = {name: tf.TensorSpec(spec.shape, spec.dtype, name=name) for name, spec in kwargs.items()}
    return SourceModel(call=lambda dense: dict(fn(**dense)), inputs=inputs, trackable=loaded,
                       kind="saved_model")


def load_source_model(path: str, signature: str = SERVING_SIGNATURE) -> SourceModel:
    if path.endswith(".keras") or path.endswith(".h5"):
        import keras

        return from_keras(keras.models.load_model(path, compile=False))
    if layout.is_saved_model_dir(path):
        return from_saved_model(path, signature)
    raise FileNotFoundError(f"{path} is neither a .keras file nor a SavedModel directory")


def derive_spec(inputs: Mapping[str, tf.TensorSpec]) -> FeatureSpec:
    """One fixed-shape feature per dense model input: the leading (batch) axis is dropped."""
    features = []
    for name, spec in inputs.items():
        dims = list(spec.shape)
        if not dims:
            raise FeatureSpecError(f"model input {name!r} has no batch axis (shape [])")
        shape = tuple(dims[1:])
        if any(d is None for d in shape):
            raise FeatureSpecError(
                f"model input {name!r} has shape {dims}: only the batch axis may be unknown")
        model_dtype = _dtype_name(spec.dtype)
        features.append(Feature(name=name, dtype=storage_dtype_for(model_dtype), shape=shape,
                                model_dtype=model_dtype))
    return make_spec(features)


def parse_to_dense(examples: tf.Tensor, spec: FeatureSpec) -> Dict[str, tf.Tensor]:
    """The graph side of the spec: parse serialized examples, cast to the model input dtypes."""
    varlen = [f.name for f in spec if f.varlen]
    if varlen:
        raise FeatureSpecError(f"variable-length features {varlen} cannot feed a dense model input")
    parsed = tf.io.parse_example(examples, parse_features(spec))
    dense = {}
    for f in spec:
        value = parsed[f.name]
        if f.encoding == RAW:
            value = tf.reshape(tf.io.decode_raw(value, f.model_dtype), [-1, *f.shape])
        elif f.input_dtype != f.dtype:
            value = tf.cast(value, f.input_dtype)
        dense[f.name] = value
    return dense


Body = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


def signature_body(model: SourceModel, spec: FeatureSpec, preprocessor: Optional[Callable] = None,
                   method: str = "predict", class_labels: Optional[Sequence[str]] = None) -> Body:
    """Parsed features {name: [batch, ...]} -> the serving signature's outputs.

    preprocessor (models.preparation.preprocessing.Preprocessor) turns the spec's raw features into the model
    inputs they feed; passthrough features are copied to outputs of their own name, as parsed:
    shape [batch, *feature shape], or [batch, 1] for a feature of shape [].
    """
    from models.preparation.signature_methods import method_outputs

    missing = sorted(set(model.inputs) - {f.model_input for f in spec})
    if missing:
        raise FeatureSpecError(f"the feature spec does not cover model inputs {missing}")
    if preprocessor is None and any(f.preprocess is not None for f in spec):
        raise FeatureSpecError("the feature spec preprocesses features but no preprocessor was given")
    passthrough = [f.name for f in spec if f.passthrough]

    def body(parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        inputs = dict(preprocessor(parsed)) if preprocessor is not None else {}
        for name, value in parsed.items():
            if name in model.inputs and name not in inputs:
                inputs[name] = value
        outputs = method_outputs(model.call({n: inputs[n] for n in model.inputs}), method, class_labels)
        clashing = sorted(set(passthrough) & set(outputs))
        if clashing:
            raise FeatureSpecError(f"passthrough features {clashing} have the names of model outputs")
        # a feature of shape [] passes through as [batch, 1]: tfx-bsl's predict handler cannot
        # split a string output with no per-example axis (it reads output[i].dtype)
        outputs.update({name: parsed[name] if parsed[name].shape.rank > 1 else tf.reshape(parsed[name], [-1, 1])
                        for name in passthrough})
        return outputs

    return body


def serving_fn(model: SourceModel, spec: FeatureSpec, body: Optional[Body] = None) -> Callable:
    body = body or signature_body(model, spec)

    def serve(examples):
        return body(parse_to_dense(examples, spec))

    return serve


def write_export(model: SourceModel, spec: FeatureSpec, export_dir: str, body: Optional[Body] = None,
                 input_name: str = EXAMPLES_INPUT, resources: Sequence[Any] = ()) -> None:
    """Writes the SavedModel with both signatures and our feature-spec file into export_dir.

    body defaults to the model on the parsed features; resources (lookup tables the body reads)
    are tracked so that both loaders initialize them.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model.trackable)
    for resource in resources:
        archive.track(resource)
    archive.add_endpoint(
        SERVING_SIGNATURE, serving_fn(model, spec, body),
        input_signature=[tf.TensorSpec([None], tf.string, name=input_name)])
    archive.add_endpoint(DENSE_SIGNATURE, model.call, input_signature=[dict(model.inputs)])
    archive.write_out(export_dir, verbose=False)
    spec_path = os.path.join(export_dir, SPEC_FILE)
    tf.io.gfile.makedirs(os.path.dirname(spec_path))
    with tf.io.gfile.GFile(spec_path, "w") as f:
        f.write(json.dumps(spec_to_json(spec), indent=2) + "\n")


def staging_dir(base: str, version: int) -> str:
    """A hidden sibling of the final version directory, renamed into place after verification."""
    return os.path.join(base, f".staging-{version}-{uuid.uuid4().hex[:8]}")


def promote(staged: str, base: str, version: int) -> str:
    final = os.path.join(base, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"version directory {final} already exists")
    tf.io.gfile.rename(staged, final)
    return final


def discard(staged: str) -> None:
    if tf.io.gfile.exists(staged):
        if os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)
        else:
            tf.io.gfile.rmtree(staged)


def choose_version(base: str, version: Optional[int]) -> int:
    if version is None:
        return layout.next_version(base)
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    if tf.io.gfile.exists(os.path.join(base, str(version))):
        raise FileExistsError(f"{os.path.join(base, str(version))} already exists; choose another --version")
    return version
