"""--output_format parquet: real jobs on real models, read back with pyarrow, against the same job's
JSON Lines and against the models called directly; the schema from the signatures."""

import glob
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.serving.examples import make_example
from models.serving.model import ServingModel
from models.serving.methods import PREDICT
from pipelines import batch_infer
from pipelines.options import OptionsError
from tests.helpers import read_jsonl
from tests.test_graphs import record_values
from transforms.records.chunk import ModelResult, ScoredChunk
from transforms.sinks.output_columns import output_columns
from transforms.sinks.parquet import chunk_table, parquet_schema


def signature_model(name, output_specs, method=PREDICT.method_name):
    """A ServingModel as load_serving_model makes it, with just the signature's outputs."""
    return ServingModel(name=name, path=f"/models/{name}/1", signature="serving_default", feature_spec=None,
                        spec_source="signature", outputs=tuple(n for n, _, _ in output_specs), method=method,
                        output_specs=tuple(output_specs))


def read_parquet(prefix):
    return pq.read_table(sorted(glob.glob(prefix + "-*.parquet")))


def penguin_records(n):
    rng = np.random.default_rng(3)
    return [make_example({"id": f"p{i}", "island": int(rng.integers(0, 3)),
                          "measurements": rng.normal([40, 15, 200, 4000], [5, 2, 10, 600]).tolist()}
                         ).SerializeToString() for i in range(n)]


def test_parquet_rows_hold_what_the_json_rows_hold(penguin_model, write_tfrecords, tmp_path):
    version_dir, _ = penguin_model
    records = penguin_records(300)
    records[3] = make_example({"id": "p3", "island": 2, "measurements": [40.0, 15.0, 200.0, 4000.0],
                               "note": [b"\xff\xfe", b"two"]}).SerializeToString()  # not UTF-8, two values
    records[7] = b"not a tf.Example"
    records[42] = make_example({"id": "p42", "island": 1}).SerializeToString()  # no measurements
    path = write_tfrecords("in.tfrecord", records)
    common = ["--input", path, "--model", version_dir, "--key_feature", "id", "--with_source",
              "--passthrough", "island,measurements,note"]
    batch_infer.run(common + ["--output", str(tmp_path / "j")], save_main_session=False)
    _, counters = batch_infer.run(common + ["--output", str(tmp_path / "p"), "--output_format", "parquet"],
                                  save_main_session=False)
    table = read_parquet(str(tmp_path / "p"))
    json_rows = {r["key"]: r for r in read_jsonl(str(tmp_path / "j") + "-*.jsonl")}
    dead = read_jsonl(str(tmp_path / "p") + ".errors-*.jsonl")
    # nothing lost: every record is a Parquet row or a dead letter (JSON Lines, as for every format)
    assert table.num_rows + len(dead) == 300 == counters["records_read"]
    assert sorted(d["key"] for d in dead) == ["in.tfrecord:7", "p42"]
    assert table.schema.field("key").type == pa.string()
    model = table.schema.field("model").type
    assert model.field("probabilities").type == pa.list_(pa.float32(), 3)
    rows = table.to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(json_rows)
    for row in rows:
        expected = json_rows[row["key"]]
        got = row["model"]
        assert np.float32(got["probabilities"]).tolist() == np.float32(expected["model"]["probabilities"]).tolist()
        assert got["species"] == expected["model"]["species"]
        assert {k: v for k, v in row["source"].items() if v is not None} == expected["source"]
        assert row["inputs"]["island"] == expected["inputs"]["island"]
        assert np.float32(row["inputs"]["measurements"]).tolist() == np.float32(expected["inputs"]["measurements"]).tolist()
    assert {r["key"]: r["inputs"]["note"] for r in rows}["p3"] == '["//4=","two"]'  # JSON text of both values


def test_a_graph_writes_a_struct_column_per_model(graph_models, write_tfrecords, tmp_path):
    values = record_values(40)
    path = write_tfrecords("g.tfrecord", [make_example(v).SerializeToString() for v in values])
    out = str(tmp_path / "g")
    batch_infer.run(["--input", path, "--model", f"five={graph_models['five'][0]}", "--model",
                     f"ten={graph_models['ten'][0]}", "--key_feature", "id", "--output", out,
                     "--output_format", "parquet", "--num_shards", "1"], save_main_session=False)
    table = read_parquet(out)
    assert table.column_names == ["key", "five", "ten"]
    by_key = {r["key"]: r for r in table.to_pylist()}
    for v in values:
        assert by_key[v["id"]]["five"]["y"] == pytest.approx([5 * v["x"][0]], rel=1e-6)
        assert by_key[v["id"]]["ten"]["y"] == pytest.approx([10 * v["x"][0]], rel=1e-6)


def test_a_model_without_outputs_for_a_record_is_a_null_struct():
    node = lambda name: types.SimpleNamespace(  # noqa: E731  (a graph node's fields that schemas read)
        name=name, postprocess=(), model=signature_model(name, [("y", "float32", (-1, 2))]))
    graph = types.SimpleNamespace(nodes=[node("m"), node("n")], passthrough=())
    schema = parquet_schema(graph)
    scored = ScoredChunk(["a", "b", "c"], [b"", b"", b""],
                         {"m": ModelResult([0, 1, 2], {"y": np.float32([[1, 2], [3, 4], [5, 6]])}),
                          "n": ModelResult([1], {"y": np.float32([[7, 8]])})}, [])
    rows = chunk_table(scored, schema).to_pylist()
    assert rows == [{"key": "a", "m": {"y": [1.0, 2.0]}, "n": None},
                    {"key": "b", "m": {"y": [3.0, 4.0]}, "n": {"y": [7.0, 8.0]}},
                    {"key": "c", "m": {"y": [5.0, 6.0]}, "n": None}]


def test_column_shapes_come_from_the_signature_unknown_dimensions_as_variable_lists():
    model = signature_model("m", [
        ("fixed", "float32", (-1, 3)), ("ragged", "float32", (-1, -1)), ("grid", "float64", (-1, 2, -1)),
        ("label", "string", (-1,)), ("count", "int64", (-1,))])
    node = types.SimpleNamespace(name="m", model=model, postprocess=())
    columns = {name: shape for name, _, shape in output_columns(node)}
    assert columns == {"fixed": (3,), "ragged": (None,), "grid": (2, None), "label": (), "count": ()}
    struct = parquet_schema(types.SimpleNamespace(nodes=[node], passthrough=())).field("m").type
    assert struct.field("ragged").type == pa.list_(pa.float32())
    assert struct.field("grid").type == pa.list_(pa.list_(pa.float64()), 2)
    assert struct.field("label").type == pa.string()
    scored = ScoredChunk(["k"], [b""], {"m": ModelResult([0], {
        "fixed": np.float32([[1, 2, 3]]), "ragged": np.float32([[4, 5]]), "grid": np.zeros((1, 2, 4)),
        "label": np.array([b"\xff"], dtype=object), "count": np.int64([9])})}, [])
    (row,) = chunk_table(scored, parquet_schema(types.SimpleNamespace(nodes=[node], passthrough=()))).to_pylist()
    assert row["m"] == {"fixed": [1.0, 2.0, 3.0], "ragged": [4.0, 5.0], "grid": [[0.0] * 4] * 2,
                        "label": "/w==", "count": 9}


def test_row_per_model_parquet_is_refused_before_launch(penguin_model, write_tfrecords, tmp_path):
    path = write_tfrecords("r.tfrecord", penguin_records(3))
    with pytest.raises(OptionsError, match="--row_per_model writes jsonl"):
        batch_infer.run(["--input", path, "--model", penguin_model[0], "--output", str(tmp_path / "o"),
                         "--output_format", "parquet", "--row_per_model"], save_main_session=False)


def test_a_chunk_that_does_not_fit_the_schema_becomes_dead_letters_and_nothing_is_lost():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.records.dead_letters import DEAD_LETTER_TAG
    from transforms.sinks.parquet import FormatParquetFn

    model = signature_model("m", [("y", "float32", (-1, 2))])
    graph = types.SimpleNamespace(nodes=[types.SimpleNamespace(name="m", model=model, postprocess=())],
                                  passthrough=())
    schema = parquet_schema(graph)
    fits = ScoredChunk(["a", "b", "c"], [b"1", b"2", b"3"],
                       {"m": ModelResult([0, 1, 2], {"y": np.zeros((3, 2), np.float32)})}, [])
    too_wide = ScoredChunk(["d", "e"], [b"4", b"5"], {"m": ModelResult([0, 1], {"y": np.zeros((2, 3), np.float32)})}, [])
    with TestPipeline() as p:
        out = (p | beam.Create([fits, too_wide])
               | beam.ParDo(FormatParquetFn(graph, schema)).with_outputs(DEAD_LETTER_TAG, main="tables"))
        rows = out.tables | beam.FlatMap(lambda table: [r["key"] for r in table.to_pylist()])
        dead = out[DEAD_LETTER_TAG] | beam.Map(lambda d: (d["key"], d["stage"], d["model"]))
        assert_that(rows, equal_to(["a", "b", "c"]), label="rows")
        assert_that(dead, equal_to([("d", "postprocess", None), ("e", "postprocess", None)]), label="dead")


def test_an_output_without_a_column_is_an_error_not_a_dropped_column():
    from transforms.sinks.output_columns import SchemaError

    node = types.SimpleNamespace(name="m", model=signature_model("m", [("y", "float32", (-1,))]), postprocess=())
    schema = parquet_schema(types.SimpleNamespace(nodes=[node], passthrough=()))
    scored = ScoredChunk(["a"], [b""], {"m": ModelResult([0], {"y": np.float32([1]), "z": np.float32([2])})}, [])
    with pytest.raises(SchemaError, match=r"\['z'\] have no column"):
        chunk_table(scored, schema)


def test_two_models_where_one_rejects_some_records_read_back_with_pyarrow_and_pandas(
        graph_models, write_tfrecords, tmp_path):
    """scale (x float[4] -> 1.5x) scores every record; strict (x -> 2x) rejects those with a
    negative x (infer), so its struct is null on those rows, over [4] outputs: pyarrow 25 cannot
    read a null fixed-size list back, so such columns are variable lists, the shape in their metadata."""
    import pandas as pd

    from tests.support.foreign_models import rejecting_export

    strict = rejecting_export(str(tmp_path / "strict"))
    xs = [[float(i), 1.0, 2.0, -1.0 if i % 3 == 0 else 3.0] for i in range(9)]
    path = write_tfrecords("in.tfrecord", [make_example({"k": f"r{i}", "x": x}).SerializeToString()
                                            for i, x in enumerate(xs)])
    out = str(tmp_path / "p")
    batch_infer.run(["--input", path, "--model", f"scale={graph_models['scale'][0]}", "--model",
                     f"strict={strict}", "--key_feature", "k", "--output", out, "--output_format", "parquet"],
                    save_main_session=False)
    files = sorted(glob.glob(out + "-*.parquet"))
    rows = {r["key"]: r for r in pq.read_table(files).to_pylist()}
    frame = pd.concat([pd.read_parquet(f) for f in files])
    dead = read_jsonl(out + ".errors-*.jsonl")
    rejected = [i for i, x in enumerate(xs) if min(x) < 0]
    assert len(rows) == len(frame) == 9
    assert sorted((d["key"], d["model"], d["stage"]) for d in dead) == [(f"r{i}", "strict", "infer") for i in rejected]
    for i, x in enumerate(xs):
        assert rows[f"r{i}"]["scale"]["y"] == pytest.approx([1.5 * v for v in x])
        assert rows[f"r{i}"]["strict"] == (None if i in rejected else {"y": pytest.approx([2 * v for v in x])})
    assert list(frame.set_index("key").loc["r1", "strict"]["y"]) == pytest.approx([2.0, 2.0, 4.0, 6.0])
    field = pq.read_schema(files[0]).field("strict").type.field("y")
    assert field.metadata == {b"shape": b"[4]"}
