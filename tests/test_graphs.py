"""Model graphs end to end: parallel and chained models against direct calls of the in-memory
models, partial failures and per-model count conservation, on both engines."""

import collections
import os
import shutil

import apache_beam as beam
import numpy as np
import pytest
import yaml
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.serving.examples import make_example
from models.serving.model import load_serving_model
from pipelines import batch_infer
from tests.helpers import read_jsonl
from transforms.graph.model import GraphError, chain_graph, parallel_graph
from transforms.records.chunk import RecordChunk
from transforms.scoring.beam import ScoreRecords
from transforms.scoring.engines import load_batch_call as shared_batch_call
from transforms.scoring.executor import score_chunk as score_graph_chunk

ENGINES = ["fast", "tfx-bsl"]


def record_values(n, seed=0):
    """Records every test model can read: x for five/ten, measurements + island for the penguins."""
    rng = np.random.default_rng(seed)
    return [{"id": f"r{i}", "x": [float(rng.normal())],
             "measurements": rng.normal([30, 11, 130, 2800], [3, 1, 9, 500]).tolist(),
             "island": int(rng.integers(0, 3))} for i in range(n)]


def keras_outputs(model, inputs):
    return {k: np.asarray(v) for k, v in model(inputs).items()}


def penguins_on(penguin_keras, measurements, islands):
    return keras_outputs(penguin_keras, {"measurements": np.asarray(measurements, np.float32),
                                         "island": np.asarray(islands, np.int64)})


def write_graph(tmp_path, config):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run(args):
    # the test models live in session directories, outside each test's graph file directory
    trusted = ["--allow_outside_paths"] if "--graph" in args else []
    return batch_infer.run(args + trusted, save_main_session=False)[1]


@pytest.mark.parametrize("engine", ENGINES)
def test_parallel_models_give_one_row_per_key_equal_to_each_model(
        graph_models, penguin_model, write_tfrecords, tmp_path, engine):
    values = record_values(60)
    path = write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in values])
    penguin_dir, penguin_keras = penguin_model
    out = str(tmp_path / "out")
    counters = run(["--input", path, "--model", f"five={graph_models['five'][0]}",
                    "--model", f"ten={graph_models['ten'][0]}", "--model", f"penguins={penguin_dir}",
                    "--output", out, "--key_feature", "id", "--engine", engine, "--max_batch_size", "16"])
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    assert sorted(rows) == sorted(v["id"] for v in values)
    x = np.asarray([v["x"] for v in values], np.float32)
    five = keras_outputs(graph_models["five"][1], x)["y"]
    ten = keras_outputs(graph_models["ten"][1], x)["y"]
    penguins = penguins_on(penguin_keras, [v["measurements"] for v in values], [v["island"] for v in values])
    for i, v in enumerate(values):
        row = rows[v["id"]]
        assert set(row) == {"key", "five", "ten", "penguins"}
        np.testing.assert_allclose(row["five"]["y"], five[i], rtol=1e-6)
        np.testing.assert_allclose(row["ten"]["y"], ten[i], rtol=1e-6)
        np.testing.assert_allclose(row["penguins"]["probabilities"], penguins["probabilities"][i], rtol=1e-6)
        assert row["penguins"]["species"] == int(penguins["species"][i])
    assert counters["predictions_written"] == 60 and not read_jsonl(out + ".errors-*.jsonl")


@pytest.mark.parametrize("engine", ENGINES)
def test_chain_feeds_outputs_forward_and_keeps_original_features(
        graph_models, penguin_model, write_tfrecords, tmp_path, engine):
    """scale(x) -> penguins.measurements by an explicit bridge, island still read from the record."""
    values = record_values(40, seed=1)
    # scale reads x[4]: give it the measurements under that name
    records = [make_example({**v, "x": v["measurements"]}).SerializeToString() for v in values]
    path = write_tfrecords("chain.tfrecord", records)
    penguin_dir, penguin_keras = penguin_model
    graph = write_graph(tmp_path, {"models": [
        {"name": "scale", "path": graph_models["scale"][0]},
        {"name": "penguins", "path": penguin_dir, "inputs": {"measurements": "scale.y"}},
    ]})
    out = str(tmp_path / "out")
    run(["--input", path, "--graph", graph, "--output", out, "--key_feature", "id", "--engine", engine])
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    scaled = keras_outputs(graph_models["scale"][1], np.asarray([v["measurements"] for v in values], np.float32))["y"]
    penguins = penguins_on(penguin_keras, scaled, [v["island"] for v in values])
    assert len(rows) == 40
    for i, v in enumerate(values):
        row = rows[v["id"]]
        np.testing.assert_allclose(row["scale"]["y"], scaled[i], rtol=1e-6)
        np.testing.assert_allclose(row["penguins"]["probabilities"], penguins["probabilities"][i], rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_chain_bridges_the_one_output_to_the_one_feature(graph_models, write_tfrecords, tmp_path, engine):
    values = record_values(20, seed=6)
    path = write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in values])
    out = str(tmp_path / "out")
    run(["--input", path, "--model", f"five={graph_models['five'][0]}", "--model",
         f"ten={graph_models['ten'][0]}", "--chain", "--output", out, "--engine", engine])
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    x = np.asarray([v["x"] for v in values], np.float32)
    five = keras_outputs(graph_models["five"][1], x)["y"]
    ten_of_five = keras_outputs(graph_models["ten"][1], five)["y"]
    for i in range(20):
        row = rows[f"in.tfrecord:{i}"]
        np.testing.assert_allclose(row["five"]["y"], five[i], rtol=1e-6)
        np.testing.assert_allclose(row["ten"]["y"], ten_of_five[i], rtol=1e-6)


def mixed_records():
    """40 records: #5 is not a tf.Example; #11 and #30 have an island the penguin model rejects."""
    values = record_values(40, seed=2)
    records = [make_example(v).SerializeToString() for v in values]
    records[5] = b"\x0a\xff\xff not an example"
    for i in (11, 30):
        records[i] = make_example({**values[i], "island": 7}).SerializeToString()
    return values, records


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_branch_leaves_partial_rows_and_counts_are_conserved_per_model(
        graph_models, penguin_model, write_tfrecords, tmp_path, engine):
    values, records = mixed_records()
    path = write_tfrecords("mixed.tfrecord", records)
    out = str(tmp_path / "out")
    graph = write_graph(tmp_path, {"models": [
        {"name": "five", "path": graph_models["five"][0]},
        {"name": "penguins", "path": penguin_model[0]},
        {"name": "ten", "path": graph_models["ten"][0], "inputs": {"x": "five.y"}},
    ]})
    counters = run(["--input", path, "--graph", graph, "--output", out, "--engine", engine,
                    "--max_batch_size", "8"])
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    dead = read_jsonl(out + ".errors-*.jsonl")
    key = "mixed.tfrecord:{}".format
    # the undecodable record: one dead letter, no model, no row
    assert [(d["key"], d["stage"], d.get("model")) for d in dead if d["key"] == key(5)] == [(key(5), "decode", None)]
    # the penguin model's rejects: a partial row (five and ten) and one infer dead letter for penguins
    for i in (11, 30):
        assert set(rows[key(i)]) == {"key", "five", "ten"}
        assert [(d["stage"], d["model"]) for d in dead if d["key"] == key(i)] == [("infer", "penguins")]
    assert len(rows) == 39 and len(dead) == 3
    reached = len(records) - 1
    for model in ("five", "penguins", "ten"):
        with_outputs = sum(model in r for r in rows.values())
        named = sum(d.get("model") == model for d in dead)
        assert with_outputs + named == reached, model
        assert counters[f"model_outputs_{model}"] == with_outputs
    # the rows still equal the models
    x = np.asarray([v["x"] for v in values], np.float32)
    np.testing.assert_allclose(rows[key(11)]["ten"]["y"], 50 * x[11], rtol=1e-6)


def test_a_failed_upstream_model_is_a_dead_letter_for_every_model_it_feeds(graph_models):
    """Executor level: five fails on record 1, so ten, which five feeds, cannot run on it."""
    five = load_serving_model(graph_models["five"][0], "five")
    ten = load_serving_model(graph_models["ten"][0], "ten")
    graph = chain_graph([five, ten])
    calls = {n.name: shared_batch_call("fast", n.model.path, n.model.signature) for n in graph.nodes}

    def five_fails_on_record_1(records):
        if any(b"poison" in r for r in records):
            raise ValueError("five refuses poison")
        return calls["five"](records)

    values = record_values(6, seed=3)
    records = [make_example(v).SerializeToString() for v in values]
    records[1] = make_example({**values[1], "id": "poison"}).SerializeToString()
    score = score_graph_chunk(graph, {"five": five_fails_on_record_1, "ten": calls["ten"]},
                              RecordChunk([f"k{i}" for i in range(6)], records))
    assert score.row_positions() == [0, 2, 3, 4, 5]
    assert sorted((d["key"], d["stage"], d["model"], d["error_type"]) for d in score.dead) == [
        ("k1", "infer", "five", "ValueError"), ("k1", "infer", "ten", "UpstreamModelFailed")]
    np.testing.assert_allclose(score.models["ten"].outputs["y"][:, 0],
                               [50 * v["x"][0] for i, v in enumerate(values) if i != 1], rtol=1e-6)


def test_bridged_values_that_do_not_fit_are_convert_dead_letters(graph_models):
    """A user function changes an output's shape at run time: the bridge check fails per record."""
    five = load_serving_model(graph_models["five"][0], "five")
    ten = load_serving_model(graph_models["ten"][0], "ten")
    graph = chain_graph([five, ten])
    real = shared_batch_call("fast", five.path, five.signature)

    def wide_outputs(records):
        out = real(records)
        return {"y": np.concatenate([out["y"], out["y"]], axis=1)}  # 2 values where x needs 1

    records = [make_example(v).SerializeToString() for v in record_values(3)]
    score = score_graph_chunk(graph, {"five": wide_outputs, "ten": shared_batch_call(
        "fast", ten.path, ten.signature)}, RecordChunk(["a", "b", "c"], records))
    assert {(d["key"], d["stage"], d["model"]) for d in score.dead} == {
        ("a", "convert", "ten"), ("b", "convert", "ten"), ("c", "convert", "ten")}
    assert "needs 1 values, the output has 2" in score.dead[0]["error"]
    assert list(score.models) == ["five"] and score.row_positions() == [0, 1, 2]


def test_row_per_model_and_passthrough(graph_models, write_tfrecords, tmp_path):
    values = record_values(5)
    path = write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in values])
    out = str(tmp_path / "out")
    run(["--input", path, "--model", f"five={graph_models['five'][0]}", "--model",
         f"ten={graph_models['ten'][0]}", "--output", out, "--row_per_model", "--passthrough", "id,island,nope"])
    rows = read_jsonl(out + "-*.jsonl")
    assert collections.Counter(r["model"] for r in rows) == {"five": 5, "ten": 5}
    for r in rows:
        i = int(r["key"].split(":")[1])
        assert set(r) == {"key", "model", "outputs", "inputs"}
        assert r["inputs"] == {"id": values[i]["id"], "island": values[i]["island"], "nope": None}
        factor = 5 if r["model"] == "five" else 10
        np.testing.assert_allclose(r["outputs"]["y"], [factor * values[i]["x"][0]], rtol=1e-6)


def test_postprocessing_in_a_graph_file(penguin_model, write_tfrecords, tmp_path):
    values = record_values(30, seed=4)
    path = write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in values])
    (tmp_path / "species.txt").write_text("Adelie\nChinstrap\nGentoo\n")
    graph = write_graph(tmp_path, {"models": [{
        "name": "penguins", "path": penguin_model[0],
        "postprocess": [{"classify": {"output": "probabilities", "labels": "species.txt", "top_k": 2}}],
        "keep": ["label", "score", "top_labels"]}], "passthrough": ["id"]})
    out = str(tmp_path / "out")
    run(["--input", path, "--graph", graph, "--output", out, "--key_feature", "id"])
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    expected = penguins_on(penguin_model[1], [v["measurements"] for v in values], [v["island"] for v in values])
    names = np.asarray(["Adelie", "Chinstrap", "Gentoo"])
    for i, v in enumerate(values):
        row = rows[v["id"]]
        probabilities = expected["probabilities"][i]
        order = np.argsort(-probabilities)
        assert set(row["penguins"]) == {"label", "score", "top_labels"}
        assert row["penguins"]["label"] == names[order[0]]
        assert row["penguins"]["top_labels"] == names[order[:2]].tolist()
        np.testing.assert_allclose(row["penguins"]["score"], probabilities.max(), rtol=1e-6)
        assert row["inputs"] == {"id": v["id"]}


def test_keyed_graph_api_on_the_direct_runner(graph_models):
    """ScoreRecords on keyed records from any source (here beam.Create)."""
    five = load_serving_model(graph_models["five"][0], "five")
    ten = load_serving_model(graph_models["ten"][0], "ten")
    graph = parallel_graph([five, ten])
    keyed = [(f"k{i}", make_example({"x": [float(i)]}).SerializeToString()) for i in range(7)]
    keyed.append(("bad", b"\x0a\xff\xff"))
    with TestPipeline() as p:
        rows, dead = p | beam.Create(keyed) | ScoreRecords(graph, max_batch_size=3)
        assert_that(rows, equal_to(
            [{"key": f"k{i}", "five": {"y": [5.0 * i]}, "ten": {"y": [10.0 * i]}} for i in range(7)]),
            label="rows")
        assert_that(dead | beam.Map(lambda d: (d["key"], d["stage"])),
                    equal_to([("bad", "decode")]), label="dead")


@pytest.mark.parametrize("args, message", [
    (["--chain"], "--chain needs two or more --model"),
    (["--graph", "g.yaml"], "either --graph or --model"),
    (["--output_format", "tfrecord", "--model", "other={five}"], "a graph (several models"),
])
def test_graph_flag_errors_are_clear(graph_models, write_tfrecords, tmp_path, capsys, args, message):
    path = write_tfrecords("in.tfrecord", [make_example({"x": [1.0]}).SerializeToString()])
    args = [a.format(five=graph_models["five"][0]) for a in args]
    code = batch_infer.main(["--input", path, "--model", graph_models["five"][0],
                             "--output", str(tmp_path / "o")] + args)
    assert code == 2 and message in capsys.readouterr().err


def test_a_graph_file_is_kept_to_its_own_directory_unless_trusted(graph_models, tmp_path):
    """A graph file names models, files and code to run; paths that lead out of its directory
    (../.., absolute, a symlink) are refused unless --allow_outside_paths."""
    from transforms.graph.file import load_graph_file

    home = tmp_path / "graphs"
    (home / "models").mkdir(parents=True)
    os.symlink(graph_models["five"][0], home / "models" / "five")  # a link out is still outside
    inside = write_graph(home, {"models": [{"name": "ok", "path": "models/../models/five"}]})
    with pytest.raises(GraphError, match="model 'ok': path 'models/../models/five' leads outside"):
        load_graph_file(inside)
    shutil.copytree(graph_models["five"][0], home / "models" / "copy")
    assert load_graph_file(write_graph(home, {"models": [{"name": "ok", "path": "models/copy"}]})).names == ["ok"]
    for path in ("../../" + os.path.relpath(graph_models["five"][0], tmp_path.parent), graph_models["five"][0]):
        graph = write_graph(home, {"models": [{"name": "far", "path": path}]})
        with pytest.raises(GraphError, match="leads outside the graph file's directory"):
            load_graph_file(graph)
        assert load_graph_file(graph, allow_outside_paths=True).names == ["far"]
    labels = write_graph(home, {"models": [{"name": "ok", "path": "models/copy", "postprocess": [
        {"classify": {"output": "y", "threshold": 0.5, "labels": "/etc/hostname"}}]}]})
    with pytest.raises(GraphError, match="model 'ok': labels: path '/etc/hostname' leads outside"):
        load_graph_file(labels)
