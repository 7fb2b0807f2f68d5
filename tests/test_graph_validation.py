"""Graph files and graph checks: every problem is refused before a pipeline exists, naming the
model and the edge."""

import dataclasses

import pytest
import yaml

from models.serving.model import load_serving_model
from transforms.graph.model import Bridge, GraphError, GraphNode, ModelGraph, bridge_problem, chain_graph, check_graph
from transforms.graph.file import graph_from_config, load_graph_file
from models.serving.feature_spec import Feature


def config(*models, **extra):
    return {"models": list(models), **extra}


@pytest.fixture(scope="module")
def paths(graph_models, penguin_model):
    return {"five": graph_models["five"][0], "ten": graph_models["ten"][0],
            "scale": graph_models["scale"][0], "penguins": penguin_model[0]}


@pytest.mark.parametrize("models, message", [
    ([{"name": "a", "path": "five"}, {"name": "b", "path": "ten", "inputs": {"x": "c.y"}}],
     "model 'b', input c.y -> x: unknown model 'c'"),
    ([{"name": "a", "path": "five"}, {"name": "b", "path": "ten", "inputs": {"x": "a.z"}}],
     "model 'b', input a.z -> x: 'a' has no output 'z'"),
    ([{"name": "a", "path": "five"}, {"name": "b", "path": "ten", "inputs": {"w": "a.y"}}],
     "model 'b', input a.y -> w: 'b' reads no feature 'w'"),
    ([{"name": "p", "path": "penguins"}, {"name": "b", "path": "ten", "inputs": {"x": "p.species"}}],
     "model 'b', input p.species -> x: output is int32 but feature 'x' stores float32"),
    ([{"name": "p", "path": "penguins"}, {"name": "s", "path": "scale", "inputs": {"x": "p.probabilities"}}],
     "model 's', input p.probabilities -> x: output has shape [3] per record (3 values) but feature 'x' "
     "has shape [4] (4 values)"),
    ([{"name": "a", "path": "five", "inputs": {"x": "b.y"}}, {"name": "b", "path": "ten", "inputs": {"x": "a.y"}}],
     "the graph has a cycle: "),
    ([{"name": "a", "path": "five", "inputs": {"x": "a.y"}}], "the graph has a cycle: a -> a"),
    ([{"name": "key", "path": "five"}], "model name 'key' is reserved"),
    ([{"name": "a", "path": "five"}, {"name": "a", "path": "ten"}], "model name 'a' is used twice"),
    ([{"name": "a.b", "path": "five"}], "cannot contain '.'"),
    ([{"name": "a", "path": "five", "engine": "turbo"}], "engine 'turbo' is not one of"),
    ([{"name": "a", "path": "five", "colour": "red"}], "unknown keys ['colour']"),
    ([{"name": "a", "path": "five"}, {"name": "p", "path": "penguins", "inputs": "a"}],
     "cannot chain 'a' -> 'p' automatically"),
    ([{"name": "p", "path": "penguins", "postprocess": [{"classify": {"output": "logits"}}]}],
     "post-processing step 1: classify: no output 'logits' (outputs: ['probabilities', 'species'])"),
    ([{"name": "p", "path": "penguins", "postprocess": [{"regress": {}}]}], "regress: the model has outputs ['probabilities', 'species']; name one with 'output'"),
    ([{"name": "p", "path": "penguins", "postprocess": [{"sharpen": {}}]}], "unknown post-processing step"),
    ([{"name": "a", "path": "five", "inputs": {"x": "nodot"}}], "'nodot' is not 'model.output'"),
    # post-processing that would fail on every record is refused from the SignatureDef's outputs
    ([{"name": "p", "path": "penguins", "postprocess": [{"classify": {"output": "probabilities"}}],
       "keep": ["label", "scor"]}],
     "model 'p': post-processing step 2: keep: no output ['scor'] (outputs: ['label', 'probabilities', "
     "'score', 'species']); did you mean 'score'?"),
    ([{"name": "p", "path": "penguins",
       "postprocess": [{"classify": {"output": "probabilities", "labels": ["a", "b"]}}]}],
     "model 'p': post-processing step 1: classify: 2 labels for 3 classes (output 'probabilities')"),
    ([{"name": "p", "path": "penguins", "postprocess": [{"classify": {"output": "probabilities", "top_k": 5}}]}],
     "classify: top_k 5 is more than the 3 classes of output 'probabilities'"),
    ([{"name": "p", "path": "penguins", "postprocess": [{"classify": {"output": "species"}}]}],
     "classify: output 'species' holds int32, not scores"),
    ([{"name": "p", "path": "penguins", "postprocess": [{"regress": {"output": "probabilities"}}]}],
     "regress: output 'probabilities' has per-record shape [3]; expected one value"),
    ([{"name": "a", "path": "five", "postprocess": [{"classify": {"threshold": 0.7}}, {"classify": {}}]}],
     "post-processing step 2: classify adds 'label', which would overwrite step 1's output 'label'"),
    ([{"name": "a", "path": "five", "postprocess": [{"classify": {"top_k": 2}}]}],
     "top_k applies to a multi-class head; 'y' is a binary head"),
])
def test_invalid_graphs_are_refused_naming_the_edge(paths, models, message):
    for entry in models:
        entry["path"] = paths[entry["path"]]
    with pytest.raises(GraphError) as error:
        graph_from_config(config(*models))
    assert message in str(error.value)


def test_a_two_model_cycle_is_named_in_order(paths):
    five = load_serving_model(paths["five"], "a")
    ten = load_serving_model(paths["ten"], "b")
    graph = ModelGraph((GraphNode(five, bridges=(Bridge("x", "b", "y"),)),
                        GraphNode(ten, bridges=(Bridge("x", "a", "y"),))))
    with pytest.raises(GraphError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        check_graph(graph)


def test_nodes_are_sorted_so_every_model_runs_after_its_sources(paths):
    graph = graph_from_config(config(
        {"name": "last", "path": paths["ten"], "inputs": {"x": "middle.y"}},
        {"name": "middle", "path": paths["five"], "inputs": "first"},
        {"name": "first", "path": paths["five"]},
        {"name": "alone", "path": paths["penguins"]}))
    assert graph.names == ["first", "alone", "middle", "last"]


def test_graph_file_paths_are_relative_to_the_file(paths, tmp_path):
    import shutil

    shutil.copytree(paths["five"], tmp_path / "models" / "five" / "1")
    (tmp_path / "labels.txt").write_text("no\nyes\n")
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(config(
        {"name": "five", "path": "models/five", "postprocess": [
            {"classify": {"output": "y", "labels": "labels.txt", "threshold": 0.3}}]},
        passthrough=["id"])))
    graph = load_graph_file(str(path))
    assert graph.nodes[0].model.path == str(tmp_path / "models" / "five" / "1")
    assert graph.nodes[0].postprocess[0].labels == ("no", "yes")
    assert graph.passthrough == ("id",)


def test_graph_file_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [a: 1\n")
    with pytest.raises(GraphError, match="not valid YAML"):
        load_graph_file(str(path))
    with pytest.raises(GraphError, match="cannot read graph file"):
        load_graph_file(str(tmp_path / "missing.yaml"))
    with pytest.raises(GraphError, match="holds 'models'"):
        graph_from_config({"model": []})


@pytest.mark.parametrize("dtype, shape, feature, problem", [
    ("float32", (-1, 4), Feature("f", "float32", (2, 2)), None),
    ("float64", (-1, 1), Feature("f", "float32", ()), None),
    ("bool", (-1,), Feature("f", "int64", ()), None),
    ("string", (-1, 1), Feature("f", "string", (1,)), None),
    ("float32", (-1, -1), Feature("f", "float32", (3,)), None),  # unknown size: checked per record
    ("float32", None, Feature("f", "float32", (3,)), None),
    ("int64", (-1,), Feature("f", "float32", ()), "output is int64 but feature 'f' stores float32"),
    ("string", (-1,), Feature("f", "int64", ()), "output is string but feature 'f' stores int64"),
    ("float32", (-1, 3), Feature("f", "float32", (4,)), "(3 values)"),
    ("float32", (-1, 12), Feature("f", "string", (), model_dtype="float32", encoding="raw"), "raw-encoded"),
])
def test_bridge_compatibility(dtype, shape, feature, problem):
    found = bridge_problem(dtype, shape, feature)
    assert (found is None) if problem is None else (problem in found)


def test_chain_graph_with_one_model_per_step(paths):
    five = load_serving_model(paths["five"], "five")
    ten = load_serving_model(paths["ten"], "ten")
    graph = chain_graph([five, ten, dataclasses.replace(ten, name="hundred")])
    assert [(n.name, [str(b) for b in n.bridges]) for n in graph.nodes] == [
        ("five", []), ("ten", ["five.y -> x"]), ("hundred", ["ten.y -> x"])]
