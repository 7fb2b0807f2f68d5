"""The fast engine against the tfx-bsl engine: parity, batch sizes, chunk scoring and formatting."""

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.examples import make_example
from models.serving_model import load_serving_model
from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.test_batch_infer import expected_outputs, penguin_values
from transforms.scoring.fast_engine import LoadedSignature, shared_signature
from transforms.records.json_lines import scored_chunk_text, to_json_line
from transforms.records.chunk import RecordChunk, score_chunk
from transforms.records.rows import outputs_to_json, prediction_row
from transforms.score import DEAD_LETTERS, ROWS, ScoreKeyedExamples


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
    version_dir, keras_model = penguin_model
    values, records = mixed_records()
    path = write_tfrecords("mixed.tfrecord", records)
    results = {}
    for engine in ("tfx-bsl", "fast"):
        out = str(tmp_path / engine)
        batch_infer.run(["--input", path, "--model", version_dir, "--output", out, "--engine", engine,
                         "--max_batch_size", "32"], save_main_session=False)
        results[engine] = ({r["key"]: r for r in read_jsonl(out + "-*.jsonl")},
                           {(d["key"], d["stage"]) for d in read_jsonl(out + ".errors-*.jsonl")})
    (tfx_rows, tfx_dead), (fast_rows, fast_dead) = results["tfx-bsl"], results["fast"]
    assert tfx_dead == fast_dead == {("mixed.tfrecord:7", "decode"), ("mixed.tfrecord:33", "validate"),
                                     ("mixed.tfrecord:90", "infer")}
    assert set(tfx_rows) == set(fast_rows) and len(fast_rows) == 117
    for key, row in fast_rows.items():
        other = tfx_rows[key]["model"]
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
            scored = (p | beam.Create(records, reshuffle=False)
                      | ScoreKeyedExamples(model, engine, min_batch_size=max_size, max_batch_size=max_size))
            sizes = scored[ROWS] | beam.Map(lambda row: scalar(row["model"]["batch_size"]))
            assert_that(sizes | "Max" >> beam.CombineGlobally(max), equal_to([max_size]), label="max")
            assert_that(scored[ROWS] | beam.Map(lambda row: (row["key"], row["model"]["echo"][0])),
                        equal_to([(f"k{i}", float(i)) for i in range(60)]), label="aligned")
            assert_that(scored[DEAD_LETTERS], equal_to([]), label="no_dead")


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
    signature = LoadedSignature(model.path, model.signature)

    def counting_call(batch):
        calls.append(len(batch))
        return signature(batch)

    chunk = RecordChunk([f"r{i}" for i in range(120)], records)
    scored, dead = score_chunk(counting_call, chunk, model.feature_spec, "m", key_feature="id")
    assert sorted((d["key"], d["stage"]) for d in dead) == [
        ("bad-island", "infer"), ("r33", "validate"), ("r7", "decode")]
    assert all(d["input_base64"] for d in dead)
    good = [i for i in range(120) if i not in (7, 33, 90)]
    assert scored.keys == [values[i]["id"] for i in good]
    expected = expected_outputs(keras_model, [values[i] for i in good])
    np.testing.assert_allclose(scored.outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    # the garbage record defeats the vectorised key parse, so validation runs first and the first
    # model call already holds only the 118 valid records; isolating the one the model rejects
    # costs a few halvings, not one call per record
    assert calls[0] == 118 and len(calls) < 20
    calls.clear()
    clean, none = score_chunk(counting_call, RecordChunk(["a", "b"], [records[0], records[1]]),
                              model.feature_spec, "m")
    assert calls == [2] and none == [] and clean.keys == ["a", "b"]


def test_the_model_is_loaded_once_per_process(penguin_model):
    version_dir, _ = penguin_model
    assert shared_signature(version_dir, "serving_default") is shared_signature(version_dir, "serving_default")


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
    chunk_lines = scored_chunk_text("m%odel", keys, outputs).split("\n")
    per_row = [to_json_line(prediction_row(k, {"m%odel": outputs_to_json({n: v[i] for n, v in outputs.items()})}))
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
    from transforms.records.json_lines import key_fragments

    keys = ["", '","', "a\\", '\\","', "x,y", "ü\n", '"']
    assert [json.loads('"' + fragment + '"') for fragment in key_fragments(keys)] == keys
