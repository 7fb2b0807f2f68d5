"""Pure: BigQuery schemas derived from model outputs (after post-processing), and rows fitted to them."""

import pytest

from models.serving.model import load_serving_model
from transforms.sinks.bigquery_schema import SchemaError, fit_record, prediction_schema
from transforms.graph.model import GraphNode, ModelGraph, check_graph
from transforms.graph.postprocessors import CallFunction, Classify, Keep, Regress


def fields_of(schema):
    return {f["name"]: f for f in schema["fields"]}


def test_columns_follow_the_signature_outputs(penguin_model):
    version_dir, _ = penguin_model
    graph = check_graph(ModelGraph((GraphNode(load_serving_model(version_dir, "clf")),)))
    schema = fields_of(prediction_schema(graph))
    assert schema["key"] == {"name": "key", "type": "STRING", "mode": "REQUIRED"}
    clf = {f["name"]: (f["type"], f["mode"]) for f in schema["clf"]["fields"]}
    # the demo classifier: probabilities float32 [3], species int32 []
    assert clf == {"probabilities": ("FLOAT64", "REPEATED"), "species": ("INT64", "NULLABLE")}
    assert set(schema) == {"key", "clf"}


def test_post_processing_passthrough_and_source_shape_the_schema(penguin_model, graph_models):
    version_dir, _ = penguin_model
    clf = GraphNode(load_serving_model(version_dir, "clf"), postprocess=(
        Keep(["probabilities"]), Classify("probabilities", labels=["adelie", "chinstrap", "gentoo"], top_k=2)))
    five = GraphNode(load_serving_model(graph_models["five"][0], "five"), postprocess=(Regress(),))
    graph = check_graph(ModelGraph((clf, five), passthrough=("island", "tags")))
    schema = fields_of(prediction_schema(graph, {"island": ("int64", 1)}, with_source=True))
    assert {f["name"]: (f["type"], f["mode"]) for f in schema["clf"]["fields"]} == {
        "probabilities": ("FLOAT64", "REPEATED"), "label": ("STRING", "NULLABLE"),
        "score": ("FLOAT64", "NULLABLE"), "top_labels": ("STRING", "REPEATED"),
        "top_scores": ("FLOAT64", "REPEATED")}
    assert schema["five"]["fields"] == [{"name": "y", "type": "FLOAT64", "mode": "NULLABLE"}]
    assert schema["inputs"]["fields"] == [{"name": "island", "type": "INT64", "mode": "NULLABLE"},
                                          {"name": "tags", "type": "STRING", "mode": "NULLABLE"}]
    assert {f["name"] for f in schema["source"]["fields"]} >= {"file", "record", "line", "table"}


def _reject_zeros(outputs):
    raise ValueError("no zeros here")


def test_a_step_that_cannot_run_on_zeros_is_a_clear_error(graph_models):
    node = GraphNode(load_serving_model(graph_models["ten"][0], "ten"),
                     postprocess=(CallFunction(_reject_zeros),))
    with pytest.raises(SchemaError, match="model 'ten': cannot derive the BigQuery columns"):
        prediction_schema(check_graph(ModelGraph((node,))))


def test_rows_are_fitted_to_the_schema():
    fields = [
        {"name": "key", "type": "STRING", "mode": "REQUIRED"},
        {"name": "m", "type": "RECORD", "mode": "NULLABLE", "fields": [
            {"name": "grid", "type": "FLOAT64", "mode": "REPEATED"},
            {"name": "label", "type": "STRING", "mode": "NULLABLE"},
            {"name": "blob", "type": "STRING", "mode": "NULLABLE"}]},
        {"name": "absent", "type": "RECORD", "mode": "NULLABLE", "fields": []},
        {"name": "inputs", "type": "RECORD", "mode": "NULLABLE", "fields": [
            {"name": "id", "type": "STRING", "mode": "NULLABLE"},
            {"name": "n", "type": "INT64", "mode": "NULLABLE"}]},
    ]
    row = {"key": "k", "m": {"grid": [[1.0, 2.0], [3.0, "NaN"]], "label": 7, "blob": {"b64": "AP8="}},
           "inputs": {"id": ["x"], "n": [3]}}
    assert fit_record(row, fields) == {
        "key": "k", "m": {"grid": [1.0, 2.0, 3.0, "NaN"], "label": "7", "blob": "AP8="},
        "inputs": {"id": "x", "n": 3}}
