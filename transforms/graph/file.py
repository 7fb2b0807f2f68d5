"""A model graph from a YAML file (`--graph graph.yaml`), validated before any pipeline exists.

    models:
      - name: five                  # the row field holding this model's outputs
        path: models/five           # relative to this file (inside its directory, unless trusted)
        signature: serving_default  # optional (default: the job's --signature)
        engine: fast                # optional (default: the job's --engine)
      - name: ten
        path: models/ten
        inputs: five                # fed by five: its one output -> ten's one feature
      - name: clf
        path: models/penguins
        inputs: {measurements: five.y}   # feature: model.output; other features from the record
        postprocess:
          - classify: {output: probabilities, labels: labels.txt, top_k: 2}
        keep: [label, score]        # outputs written to the row (after post-processing)
    passthrough: [id]               # input features copied to each row under "inputs"

A model without `inputs` reads the records; models that do not feed each other run in parallel.
A graph file is kept to its directory (paths out of it, file:// and gs:// ones included, need
allow_outside_paths) and to the project's post-processing steps (`function:` steps need
allow_functions: they import and run what they name).
"""

import os
import re
from typing import Any, List, Mapping

import yaml

from models.serving.model import ServingModel, load_serving_model
from transforms.graph.model import Bridge, GraphError, GraphNode, ModelGraph, auto_bridges, check_graph
from models.serving.engines import DEFAULT_ENGINE
from transforms.graph.postprocessors import Keep, PostprocessError, step_from_config

TOP_LEVEL_KEYS = {"models", "passthrough"}
MODEL_KEYS = {"name", "path", "signature", "engine", "inputs", "postprocess", "keep"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
OUTSIDE_HINT = ("a graph file is code you run (it names models, files and functions): give "
                "--allow_outside_paths if you trust it")


def _resolve(path: str, base_dir: str, confine: bool = False) -> str:
    """The path relative to the graph file's directory (absolute and remote ones as given; file://
    ones are local paths like the rest). With confine, a path that leads outside that directory
    (../.., /etc, a symlink out, file:///etc, gs://...) is refused: a graph file names files to read
    and code to run, so one from elsewhere is kept to its folder."""
    local = path[len("file://"):] if path[:len("file://")].lower() == "file://" else path
    if _SCHEME.match(local) and not confine:
        return local
    resolved = local if os.path.isabs(local) else os.path.normpath(os.path.join(base_dir, local))
    if confine:
        home = os.path.realpath(base_dir)
        if _SCHEME.match(local) or os.path.commonpath([os.path.realpath(resolved), home]) != home:
            raise GraphError(f"path {path!r} leads outside the graph file's directory {home}; {OUTSIDE_HINT}")
    if os.path.exists(resolved) and not (os.path.isfile(resolved) or os.path.isdir(resolved)):
        raise GraphError(f"path {path!r} is a special file (a FIFO or a device: {os.path.realpath(resolved)}), "
                         "never read")
    return resolved


def _bridges(name: str, inputs: Any, models: Mapping[str, ServingModel]) -> List[Bridge]:
    if inputs is None:
        return []
    if isinstance(inputs, str):
        if inputs not in models:
            raise GraphError(f"model {name!r}: inputs names unknown model {inputs!r} (models: {sorted(models)})")
        return list(auto_bridges(models[inputs], models[name]))
    if not isinstance(inputs, Mapping):
        raise GraphError(f"model {name!r}: inputs is a model name or a mapping feature: model.output")
    bridges = []
    for feature, source in inputs.items():
        model, dot, output = str(source).partition(".")
        if not dot or not model or not output:
            raise GraphError(f"model {name!r}: input {feature}: {source!r} is not 'model.output'")
        bridges.append(Bridge(str(feature), model, output))
    return bridges


def _steps(name: str, entry: Mapping[str, Any], base_dir: str, confine: bool = False,
           allow_functions: bool = True) -> tuple:
    configs = entry.get("postprocess") or []
    if not isinstance(configs, list):
        raise GraphError(f"model {name!r}: postprocess is a list of steps")
    steps = []
    for config in configs:
        if isinstance(config, Mapping) and isinstance(config.get("classify"), Mapping):
            labels = config["classify"].get("labels")
            if isinstance(labels, str):  # a vocabulary file, relative to the graph file
                try:
                    labels = _resolve(labels, base_dir, confine)
                except GraphError as e:
                    raise GraphError(f"model {name!r}: labels: {e}") from e
                config = {"classify": {**config["classify"], "labels": labels}}
        try:
            steps.append(step_from_config(config, allow_functions))
        except (PostprocessError, OSError) as e:
            raise GraphError(f"model {name!r}: {e}") from e
    if entry.get("keep") is not None:
        try:
            steps.append(Keep(entry["keep"]))
        except PostprocessError as e:
            raise GraphError(f"model {name!r}: {e}") from e
    return tuple(steps)


def graph_from_config(config: Any, base_dir: str = ".", engine: str = DEFAULT_ENGINE,
                      signature: str = "serving_default", confine: bool = False,
                      allow_functions: bool = True) -> ModelGraph:
    """A checked ModelGraph from the parsed YAML; raises GraphError or ModelContractError.
    confine: paths must stay inside base_dir (see _resolve); allow_functions: `function:` steps
    may name any importable callable (else they are refused, nothing imported)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("models"), list) or not config["models"]:
        raise GraphError("a graph file holds 'models': a list of {name, path, ...}")
    unknown = set(config) - TOP_LEVEL_KEYS
    if unknown:
        raise GraphError(f"unknown graph keys {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    entries = config["models"]
    models = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("name") or not entry.get("path"):
            raise GraphError(f"each model needs a name and a path, got {entry!r}")
        name = str(entry["name"])
        unknown = set(entry) - MODEL_KEYS
        if unknown:
            raise GraphError(f"model {name!r}: unknown keys {sorted(unknown)}; allowed: {sorted(MODEL_KEYS)}")
        if "." in name:
            raise GraphError(f"model {name!r}: a name cannot contain '.' (inputs read model.output)")
        if name in models:
            raise GraphError(f"model name {name!r} is used twice")
        try:
            path = _resolve(str(entry["path"]), base_dir, confine)
        except GraphError as e:
            raise GraphError(f"model {name!r}: {e}") from e
        models[name] = load_serving_model(path, name, str(entry.get("signature", signature)))
    nodes = []
    for entry in entries:
        name = str(entry["name"])
        nodes.append(GraphNode(models[name], str(entry.get("engine", engine)),
                               tuple(_bridges(name, entry.get("inputs"), models)),
                               _steps(name, entry, base_dir, confine, allow_functions)))
    passthrough = config.get("passthrough") or []
    if isinstance(passthrough, str) or not all(isinstance(p, str) for p in passthrough):
        raise GraphError("passthrough is a list of feature names")
    return check_graph(ModelGraph(tuple(nodes), tuple(passthrough)))


def load_graph_file(path: str, engine: str = DEFAULT_ENGINE, signature: str = "serving_default",
                    allow_outside_paths: bool = False, allow_functions: bool = False) -> ModelGraph:
    """The graph of a YAML file. Its paths (file:// and gs:// ones too) must stay in the file's
    directory unless allow_outside_paths, and its post-processing steps are the project's own
    (postprocessors.STEPS) unless allow_functions lets `function:` steps import and run any
    callable they name: a graph file given those is trusted like code."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise GraphError(f"cannot read graph file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise GraphError(f"graph file {path} is not valid YAML: {e}") from e
    return graph_from_config(config, os.path.dirname(os.path.abspath(path)), engine, signature,
                             confine=not allow_outside_paths, allow_functions=allow_functions)
