"""A prepared model as the pipelines see it: resolved version, checked contract, feature spec."""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from models.serving import layout, op_libraries
from models.serving.contract import contract_problems, serving_meta_graph, tf1_loader_problems
from models.serving.dense import TensorInfo, signature_inputs, tensor_input_spec
from models.serving.feature_spec import SPEC_FILE, FeatureSpec, load_spec_file, spec_from_json
from models.serving.methods import signature_method
from models.serving.signature_spec import spec_from_signature

DEFAULT_MODEL_NAME = "model"
# where a spec read from the model itself came from (ServingModel.spec_source; else a --feature_spec file)
SPEC_SOURCES = ("feature_spec.json", "signature", "signature inputs")


class ModelContractError(ValueError):
    """A model directory the pipeline cannot run; raised before the pipeline starts."""


@dataclasses.dataclass(frozen=True)
class ServingModel:
    name: str
    path: str  # the version directory
    signature: str
    feature_spec: FeatureSpec
    spec_source: str  # one of SPEC_SOURCES, or the --feature_spec file it came from
    outputs: Tuple[str, ...]
    method: str
    # (name, dtype name, shape with -1 for unknown sizes; None for unknown rank), sorted by name
    output_specs: Tuple[Tuple[str, str, Optional[Tuple[int, ...]]], ...] = ()
    tf1_loader_problems: Tuple[str, ...] = ()  # why tfx-bsl's TF1 loader cannot run it (the fast engine can)
    base_path: Optional[str] = None  # the base directory it was picked from (None: given as a version dir)
    # the signature's inputs when it takes tensors (models.serving.dense); () for serialized tf.Example
    input_tensors: Tuple[str, ...] = ()

    def row_output_specs(self) -> Tuple[Tuple[str, Optional[str], Optional[Tuple[int, ...]]], ...]:
        """(name, dtype name, shape with the batch axis) of the outputs as the engines give them and
        rows hold them: the signature's, through its method's rule (a regress [n, 1] is [n]; a
        classify signature with scores only also has classes). A model made without output specs
        gives its output names, with dtype and shape None."""
        specs = self.output_specs or tuple((name, None, None) for name in self.outputs)
        return signature_method(self.method).output_specs(specs)

    @property
    def spec_file(self) -> Optional[str]:
        """The --feature_spec file the spec came from (None: read from the model itself)."""
        return None if self.spec_source in SPEC_SOURCES else self.spec_source

    @property
    def engine_spec(self) -> Optional[FeatureSpec]:
        """The spec an engine parses records into the signature's tensors with; None when the
        signature takes serialized tf.Example (it parses them itself)."""
        return self.feature_spec if self.input_tensors else None

    @property
    def version_name(self) -> str:
        """The version directory's name as it is on disk ("1002", "00000124")."""
        return os.path.basename(self.path.rstrip("/"))

    @property
    def version(self) -> Optional[int]:
        return layout.version_of(self.path)


def parse_model_arg(arg: str) -> Tuple[str, str]:
    """'NAME=DIR' or 'DIR' -> (name, dir). A '=' inside a gs:// path is not a name separator."""
    name, sep, path = arg.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        return name, path
    return DEFAULT_MODEL_NAME, arg


def read_feature_spec(export_dir: str, signature: str) -> Tuple[FeatureSpec, str]:
    spec_path = os.path.join(export_dir, SPEC_FILE)
    if tf.io.gfile.exists(spec_path):
        with tf.io.gfile.GFile(spec_path) as f:
            return spec_from_json(json.load(f)), "feature_spec.json"
    return spec_from_signature(export_dir, signature), "signature"


def model_spec(version_dir: str, signature: str, spec_file: Optional[str] = None
               ) -> Tuple[FeatureSpec, str, Dict[str, TensorInfo]]:
    """(the feature spec a job feeds the signature with, where it came from, the signature's
    tensor inputs: {} when it takes serialized tf.Example). For a signature of tensors the spec
    comes from its inputs, spec_file's entries overriding them; otherwise spec_file replaces
    the spec read from the model (read_feature_spec). Raises ValueError for a spec that cannot be used."""
    overrides = load_spec_file(spec_file) if spec_file else ()
    inputs = signature_inputs(version_dir, signature, overrides)
    if inputs:
        return tensor_input_spec(inputs, overrides), spec_file or "signature inputs", inputs
    if spec_file:
        return overrides, spec_file, inputs
    return (*read_feature_spec(version_dir, signature), inputs)


def load_serving_model(path: str, name: str = DEFAULT_MODEL_NAME, signature: str = "serving_default",
                       spec_file: Optional[str] = None) -> ServingModel:
    """The model at path (a version or base directory), checked; spec_file (a feature spec JSON)
    replaces the spec read from the model (assets.extra/feature_spec.json or the parse op), or,
    for a signature that takes tensors, overrides the features its inputs give (models.serving.dense)."""
    try:
        version_dir = layout.resolve_version_dir(path)  # links out of it, special files: refused unread
    except layout.UnsafeModelError as e:
        raise ModelContractError(f"model {name!r}: {e}") from e
    except layout.ModelNotFoundError as e:
        raise ModelContractError(str(e)) from e
    problems = contract_problems(version_dir, signature, tf1_loader=False, tensor_inputs=True)
    if not problems:
        problems = fixed_batch_problems(serving_meta_graph(version_dir).signature_def[signature])
    if problems:
        raise ModelContractError(
            f"model {name!r} at {version_dir} cannot run:\n  - " + "\n  - ".join(problems))
    try:  # tensorflow-text's, YDF's ops...: registered before anything loads the graph
        op_libraries.import_for_model(version_dir)
    except op_libraries.OpLibraryError as e:
        raise ModelContractError(f"model {name!r} at {version_dir} cannot run: {e}") from e
    try:
        spec, source, inputs = model_spec(version_dir, signature, spec_file)
    except ValueError as e:
        raise ModelContractError(f"model {name!r} at {version_dir}: {e}") from e
    meta_graph = serving_meta_graph(version_dir)
    sig = meta_graph.signature_def[signature]
    return ServingModel(name=name, path=version_dir, signature=signature, feature_spec=spec,
                        spec_source=source, outputs=tuple(sorted(sig.outputs)),
                        method=sig.method_name, output_specs=output_specs(sig),
                        tf1_loader_problems=tuple(tf1_loader_problems(meta_graph, signature)),
                        base_path=None if version_dir == path.rstrip("/") else path.rstrip("/"),
                        input_tensors=tuple(inputs))


def fixed_batch_problems(signature_def) -> List[str]:
    """Outputs whose first dimension is a fixed number: the model ignores the batch (it would
    give every batch that many rows, whatever the number of inputs)."""
    return [f"output {name!r} has shape {[d for d in shape]}: its first dimension must be the batch "
            f"(unknown, -1), not a fixed {shape[0]}; the model ignores the batch"
            for name, _, shape in output_specs(signature_def) if shape and shape[0] > 0]


def output_specs(signature_def) -> Tuple[Tuple[str, str, Optional[Tuple[int, ...]]], ...]:
    specs = []
    for name in sorted(signature_def.outputs):
        info = signature_def.outputs[name]
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
        specs.append((name, tf.as_dtype(info.dtype).name, dims))
    return tuple(specs)


def load_serving_models(args: List[str], signature: str = "serving_default",
                        spec_files: Sequence[str] = ()) -> List[ServingModel]:
    """--model [NAME=]DIR arguments; spec_files: --feature_spec [NAME=]FILE arguments (a bare FILE
    applies to every model)."""
    named = dict(parse_model_arg(arg) for arg in spec_files)
    models = [load_serving_model(path, name, signature, named.get(name, named.get(DEFAULT_MODEL_NAME)))
              for name, path in map(parse_model_arg, args)]
    unknown = sorted(set(named) - {m.name for m in models} - {DEFAULT_MODEL_NAME})
    if unknown:
        raise ModelContractError(f"--feature_spec names models {unknown} that no --model gives")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ModelContractError(f"model names must be unique, got {names}: use --model NAME=DIR")
    return models
