"""The fast engine against the tfx-bsl engine: parity, batch sizes, chunk scoring and formatting."""

import base64
import dataclasses
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.serving.examples import make_example
from models.serving.model import load_serving_model
from pipelines import batch_infer
from tests.helpers import read_jsonl, row_lines
from tests.test_batch_infer import expected_outputs, penguin_values
from transforms.graph.model import parallel_graph
from transforms.records.chunk import ModelResult, RecordChunk
from transforms.records.rows import key_fragments, outputs_to_json, to_json_line
from transforms.scoring.beam import ScoreRecords
from models.serving.engines import FastSignatureCall
from transforms.scoring.engines import load_batch_call
from transforms.scoring.executor import score_chunk


@pytest.fixture(scope="module")
def batch_size_model(tmp_path_factory):
    """A real model whose output is the size of the batch it was called on."""
    import keras
    import tensorflow as tf

    from models.prepare import prepare_model

    x = keras.Input(shape=(2,), name="x")
    seen = keras.layers.Lambda(
        lambda t: tf.fill(tf.shape(t)[:1], tf.cast(tf.shape(t)[0], tf.float32)), name="batch_size")(x)
    model = keras.Model(x, {"batch_size": seen, "echo": keras.layers.Identity(name="echo")(x)})
    return prepare_model(model, str(tmp_path_factory.mktemp("models") / "batchsize"))


def scalar(value):
    """The batch-size output per example: a scalar, or a one-element list where Keras keeps an axis."""
    return value[0] if isinstance(value, list) else value


def mixed_records():
    values = penguin_values(120, seed=5)
    records = [make_example(v).SerializeToString() for v in values]
    records[7] = b"garbage"
    records[33] = make_example({"id": "bad-shape", "measurements": [1.0], "island": 0}).SerializeToString()
    records[90] = make_example({"id": "bad-island", "measurements": [1.0] * 4, "island": 5}).SerializeToString()
    return values, records


def test_engines_give_the_same_rows_and_dead_letters(penguin_model, write_tfrecords, tmp_path):
    """The same records through both engines, as one model and inside a two-model graph: the same
    rows, and the same dead letters, compared as whole rows (key, stage, type, message, raw input,
    source, model)."""
    version_dir, keras_model = penguin_model
    values, records = mixed_records()
    path = write_tfrecords("mixed.tfrecord", records)
    runs = {"fast": ["--model", version_dir], "tfx-bsl": ["--model", version_dir, "--engine", "tfx-bsl"],
            "graph": ["--model", f"model={version_dir}", "--model", f"twin={version_dir}"],
            "graph-tfx-bsl": ["--model", f"model={version_dir}", "--model", f"twin={version_dir}",
                              "--engine", "tfx-bsl"]}
    results = {}
    for name, flags in runs.items():
        out = str(tmp_path / name)
        batch_infer.run(["--input", path, "--output", out, "--max_batch_size", "32"] + flags,
                        save_main_session=False)
        results[name] = ({r["key"]: r for r in read_jsonl(out + "-*.jsonl")},
                         sorted(read_jsonl(out + ".errors-*.jsonl"), key=lambda d: (d["key"], str(d["model"]))))
    (tfx_rows, tfx_dead), (fast_rows, fast_dead) = results["tfx-bsl"], results["fast"]
    assert [(d["key"], d["stage"], d["model"]) for d in fast_dead] == [
        ("mixed.tfrecord:33", "validate", "model"), ("mixed.tfrecord:7", "decode", None),
        ("mixed.tfrecord:90", "infer", "model")]
    for row in fast_dead:
        i = int(row["key"].split(":")[1])
        assert row["source"] == {"file": path, "record": i}
        assert base64.b64decode(row["input_base64"]) == records[i]
    assert tfx_dead == fast_dead  # whole rows, messages included
    for graph in ("graph", "graph-tfx-bsl"):
        rows, dead = results[graph]
        # per model, the graph's dead letters are the one-model job's; a record that is not a
        # tf.Example fails before any model, once
        assert [d for d in dead if d["model"] != "twin"] == fast_dead
        assert [dict(d, model="model") for d in dead if d["model"] == "twin"] == [
            d for d in fast_dead if d["model"] == "model"]
        assert {k: r["model"] for k, r in rows.items()} == {k: r["model"] for k, r in results[graph][0].items()}
        assert sorted(rows) == sorted(fast_rows)
    assert set(tfx_rows) == set(fast_rows) and len(fast_rows) == 117
    for key, row in fast_rows.items():
        for other in (tfx_rows[key]["model"], results["graph"][0][key]["twin"],
                      results["graph-tfx-bsl"][0][key]["model"]):
            np.testing.assert_allclose(row["model"]["probabilities"], other["probabilities"], rtol=1e-6)
            assert row["model"]["species"] == other["species"]
    # and both equal the in-memory model
    good = [i for i in range(120) if i not in (7, 33, 90)]
    expected = expected_outputs(keras_model, [values[i] for i in good])
    for j, i in enumerate(good):
        np.testing.assert_allclose(fast_rows[f"mixed.tfrecord:{i}"]["model"]["probabilities"],
                                   expected["probabilities"][j], rtol=1e-6)


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_keyed_api_batch_sizes_take_effect(batch_size_model, engine):
    model = load_serving_model(batch_size_model)
    records = [(f"k{i}", make_example({"x": [float(i), 1.0]}).SerializeToString()) for i in range(60)]
    for max_size in (4, 16):
        with TestPipeline() as p:
            rows, dead = (p | beam.Create(records, reshuffle=False)
                          | ScoreRecords(model, max_batch_size=max_size, engine=engine))
            sizes = rows | beam.Map(lambda row: scalar(row["model"]["batch_size"]))
            assert_that(sizes | "Max" >> beam.CombineGlobally(max), equal_to([max_size]), label="max")
            assert_that(rows | beam.Map(lambda row: (row["key"], row["model"]["echo"][0])),
                        equal_to([(f"k{i}", float(i)) for i in range(60)]), label="aligned")
            assert_that(dead, equal_to([]), label="no_dead")


def test_chunked_path_batches_by_max_batch_size(batch_size_model, write_tfrecords, tmp_path):
    records = [make_example({"x": [float(i), 0.0]}).SerializeToString() for i in range(35)]
    path = write_tfrecords("b.tfrecord", records)
    out = str(tmp_path / "o")
    batch_infer.run(["--input", path, "--model", batch_size_model, "--output", out,
                     "--max_batch_size", "10"], save_main_session=False)
    rows = read_jsonl(out + "-*.jsonl")
    assert sorted(scalar(r["model"]["batch_size"]) for r in rows) == [5.0] * 5 + [10.0] * 30
    assert {r["key"]: r["model"]["echo"][0] for r in rows} == {f"b.tfrecord:{i}": float(i) for i in range(35)}


def test_score_chunk_keeps_keys_aligned_and_isolates_bad_records(penguin_model):
    version_dir, keras_model = penguin_model
    model = load_serving_model(version_dir)
    values, records = mixed_records()
    calls = []
    signature = FastSignatureCall(model.path, model.signature)
    graph = parallel_graph([dataclasses.replace(model, name="m")])

    def counting_call(batch):
        calls.append(len(batch))
        return signature(batch)

    chunk = RecordChunk([f"r{i}" for i in range(120)], records)
    scored = score_chunk(graph, {"m": counting_call}, chunk, key_feature="id")
    # the key is the key feature's value wherever the record has one; r7 is not a tf.Example
    assert sorted((d["key"], d["stage"], d["model"]) for d in scored.dead) == [
        ("bad-island", "infer", "m"), ("bad-shape", "validate", "m"), ("r7", "decode", None)]
    assert all(d["input_base64"] for d in scored.dead)
    good = [i for i in range(120) if i not in (7, 33, 90)]
    assert scored.row_positions() == good
    assert [scored.keys[i] for i in good] == [values[i]["id"] for i in good]
    expected = expected_outputs(keras_model, [values[i] for i in good])
    np.testing.assert_allclose(scored.models["m"].outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    # the garbage record defeats the vectorised key parse, so validation runs first and the first
    # model call already holds only the 118 valid records; isolating the one the model rejects
    # costs a few halvings, not one call per record
    assert calls[0] == 118 and len(calls) < 20
    calls.clear()
    clean = score_chunk(graph, {"m": counting_call}, RecordChunk(["a", "b"], [records[0], records[1]]))
    assert calls == [2] and clean.dead == [] and clean.keys == ["a", "b"]


def test_the_model_is_loaded_once_per_process(penguin_model):
    version_dir, _ = penguin_model
    for engine in ("fast", "tfx-bsl"):
        assert load_batch_call(engine, version_dir, "serving_default") is load_batch_call(
            engine, version_dir, "serving_default")


@pytest.mark.parametrize("outputs", [
    {"p": np.random.default_rng(0).random((5, 3)).astype(np.float32), "c": np.arange(5)},
    {"scalar": np.linspace(-1e20, 1e20, 5).astype(np.float32)},
    {"cube": np.random.default_rng(1).normal(size=(5, 2, 3, 2)).astype(np.float64)},
    {"flag": np.array([True, False, True, True, False]), "empty": np.zeros((5, 0), np.float32)},
    {"nan": np.array([[1.0], [np.nan], [np.inf], [-np.inf], [2.5]], np.float32)},
    {"text": np.array([b"a", b"\xff\xfe", b"c", b"", b"e"], dtype=object), "x": np.ones((5, 1), np.int32)},
])
def test_chunk_text_equals_per_row_rows(outputs):
    keys = ["k0", 'quote"d', "k,2", "k%3", "ünï"]
    chunk_lines = row_lines(keys, {"m%odel": ModelResult(list(range(5)), outputs)})
    per_row = [to_json_line({"key": k, "m%odel": outputs_to_json({n: v[i] for n, v in outputs.items()})})
               for i, k in enumerate(keys)]
    assert [json.loads(line) for line in chunk_lines] == [json.loads(line) for line in per_row]


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_bytes_only_tensorflow_rejects_are_decode_dead_letters(penguin_model, write_tfrecords, tmp_path, engine):
    # Python's protobuf accepts a trailing group wire type that TensorFlow's parser rejects: the
    # record passes validation, fails inside the model, and must still be filed under decode.
    version_dir, _ = penguin_model
    records = [make_example(v).SerializeToString() for v in penguin_values(20, seed=9)]
    records[4] = records[4] + b"\x1b\x1c"
    path = write_tfrecords("lenient.tfrecord", records)
    out = str(tmp_path / "o")
    batch_infer.run(["--input", path, "--model", version_dir, "--output", out, "--engine", engine],
                    save_main_session=False)
    dead = read_jsonl(out + ".errors-*.jsonl")
    assert [(d["key"], d["stage"]) for d in dead] == [("lenient.tfrecord:4", "decode")]
    assert len(read_jsonl(out + "-*.jsonl")) == 19


def test_key_fragments_survive_quotes_commas_and_backslashes():
    keys = ["", '","', "a\\", '\\","', "x,y", "ü\n", '"']
    assert [json.loads('"' + fragment + '"') for fragment in key_fragments(keys)] == keys
