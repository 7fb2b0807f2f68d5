"""The conformance matrix: every crossing of source x model shape x sink (tests/matrix/table.py)
run end to end through the real entry points, in-process, as a new user would run them:
`pipelines.batch_infer.run` for files and BigQuery, `pipelines.stream_infer.run` for Pub/Sub.

Each runnable cell writes the cell's generated records (tests/matrix/records.py: every feature
kind) in its source's form, runs the job with `--key_feature id` (`--key_column`,
`--key_attribute`), reads the sink back with the standard reader and checks it against the
models' signatures called directly (tests/matrix/checkers.py). A refused cell asserts exit 2 with
its reason and that nothing was written. Cells outside table.FAST are marked matrix_full.
"""

import dataclasses
import glob
import os
import subprocess
import sys
import time
import uuid
from typing import List, Optional

import pytest

from tests.matrix import checkers, models, records, table
from transforms.runtime.accounting import READ_AS_ARRAYS

CELLS = [pytest.param(cell, id=table.cell_id(cell), marks=(
    ([] if cell in table.FAST else [pytest.mark.matrix_full])
    + ([pytest.mark.xfail(strict=True, reason=table.expectation(cell).bug)] if table.expectation(cell).bug else [])))
    for cell in table.all_cells()]


@pytest.fixture(scope="session")
def matrix_models(tmp_path_factory):
    """The test models (real SavedModels) and graph files: (dirs, graph files, signatures)."""
    base = str(tmp_path_factory.mktemp("matrix_models"))
    dirs = models.build_models(base)
    graphs = models.write_graphs(base)
    return dirs, graphs, {name: models.load_signature(path) for name, path in dirs.items()}


@pytest.fixture(scope="session")
def matrix_dataset(bigquery_emulator):
    """A BigQuery dataset on the local emulator for the matrix's tables."""
    client = bigquery_emulator.client()
    name = "matrix_" + uuid.uuid4().hex[:8]
    client.create_dataset(name)
    yield f"{bigquery_emulator.project}:{name}"
    client.delete_dataset(name, delete_contents=True)


@dataclasses.dataclass
class Context:
    """What a cell's flags point at: its folder and, when it needs them, the emulators."""
    cell: tuple
    tmp: str
    records: list
    bigquery: Optional[object] = None
    dataset: Optional[str] = None
    pubsub: Optional[object] = None
    topics: dict = dataclasses.field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return os.path.join(self.tmp, "out", "pred")

    def table(self, role: str) -> str:
        return f"{self.dataset}.{role}_{uuid.uuid4().hex[:6]}"


def make_context(cell, tmp_path, request) -> Context:
    """The cell's records and, for a cell that runs, the emulators it needs (started once)."""
    src, _, sink = cell
    ctx = Context(cell, str(tmp_path), records.cell_records(table.cell_id(cell)))
    if table.expectation(cell).refused:
        return ctx
    if "bigquery" in (src, sink):
        ctx.bigquery = request.getfixturevalue("bigquery_emulator")
        ctx.dataset = request.getfixturevalue("matrix_dataset")
    if src in table.STREAM_SOURCES:
        ctx.pubsub = request.getfixturevalue("pubsub_emulator")
    return ctx


def source_flags(ctx: Context) -> List[str]:
    """Writes the records in the source's form; returns the flags that read them."""
    src = ctx.cell[0]
    path = os.path.join(ctx.tmp, "in")
    if src == "tfrecord":
        return ["--input", records.write_tfrecord(path + ".tfrecord", ctx.records), "--key_feature", "id"]
    if src == "tfrecord_gz":
        return ["--input", records.write_tfrecord(path + ".tfrecord.gz", ctx.records, gzip=True),
                "--key_feature", "id"]
    if src == "jsonl":
        return ["--input", records.write_jsonl(path + ".jsonl", ctx.records), "--key_feature", "id"]
    if src == "csv":
        return ["--input", records.write_csv(path + ".csv", ctx.records), "--key_feature", "id"]
    if src == "parquet":
        return ["--input", records.write_parquet(path + ".parquet", ctx.records), "--key_feature", "id"]
    if src == "bigquery":
        return ["--input_table", bigquery_table(ctx) if ctx.bigquery else "local:ds.t", "--key_column", "id"]
    if src == "pubsub":
        topic = ctx.pubsub.topic("matrix-requests") if ctx.pubsub else "projects/local-project/topics/r"
        ctx.topics["requests"] = topic
        return ["--input_subscription", topic.replace("/topics/", "/subscriptions/"),
                "--payload_format", "json", "--key_attribute", "id", "--max_batch_latency_ms", "50"]
    raise AssertionError(f"no flags for source {src}")


def bigquery_table(ctx: Context) -> str:
    """The records loaded into a new table on the emulator (the google.cloud.bigquery client)."""
    from google.cloud import bigquery

    client = ctx.bigquery.client()
    name = ctx.table("input")
    created = client.create_table(bigquery.Table(name.replace(":", "."), schema=[
        bigquery.SchemaField(*column) for column in records.BIGQUERY_SCHEMA]))
    assert client.insert_rows(created, records.bigquery_rows(ctx.records)) == []
    return name


def shape_flags(shape: str, dirs: dict, graphs: dict) -> List[str]:
    if shape == "dense":
        return ["--model", f"tensors={dirs['tensors']}", "--feature_spec", f"tensors={graphs['dense']}"]
    if shape in table.SINGLE_MODEL_SHAPES:
        (name,) = models.SHAPE_MODELS[shape]
        return ["--model", f"{name}={dirs[name]}"]
    if shape == "parallel":
        return ["--model", f"kinds={dirs['kinds']}", "--model", f"gate={dirs['gate']}"]
    return ["--graph", graphs[shape]]


def sink_flags(ctx: Context) -> List[str]:
    sink = ctx.cell[2]
    if sink in table.FILE_SINKS:
        return ["--output", ctx.prefix] + ([] if sink == "jsonl" else ["--output_format", sink])
    if sink == "bigquery":
        ctx.topics["output"] = ctx.table("scored") if ctx.dataset else "local:ds.o"
        ctx.topics["errors"] = ctx.table("errors") if ctx.dataset else "local:ds.e"
        return ["--output_table", ctx.topics["output"], "--errors_table", ctx.topics["errors"]]
    for role in ("output", "errors"):
        ctx.topics[role] = ctx.pubsub.topic(f"matrix-{role}") if ctx.pubsub else f"projects/local-project/topics/{role}"
    return ["--output_topic", ctx.topics["output"], "--errors_topic", ctx.topics["errors"]]


def emulator_flags(ctx: Context) -> List[str]:
    from tests.test_bigquery import emulator_flags as bigquery_flags

    flags = bigquery_flags(ctx.bigquery) if ctx.bigquery else []
    return flags + (["--project", ctx.pubsub.project] if ctx.pubsub and not ctx.bigquery else [])


def argv(ctx: Context, matrix_models) -> List[str]:
    dirs, graphs, _ = matrix_models
    return source_flags(ctx) + shape_flags(ctx.cell[1], dirs, graphs) + sink_flags(ctx) + emulator_flags(ctx)


def read_sink(ctx: Context, expected: list):
    """(rows, dead letters) of a batch job, read back from its sink."""
    sink, model = ctx.cell[2], models.SHAPE_MODELS[ctx.cell[1]][0]
    if sink == "bigquery":
        client = ctx.bigquery.client()
        return (checkers.read_bigquery_rows(client, ctx.topics["output"]),
                checkers.read_bigquery_dead(client, ctx.topics["errors"]))
    readers = {"jsonl": lambda: checkers.read_jsonl_rows(ctx.prefix),
               "parquet": lambda: checkers.read_parquet_rows(ctx.prefix),
               "tfrecord": lambda: checkers.read_prediction_logs(ctx.prefix, model, ctx.records),
               "examples": lambda: checkers.read_examples(ctx.prefix, model, sorted(expected[0][model]))}
    return readers[sink](), checkers.read_jsonl_dead(ctx.prefix)


def run_batch_cell(ctx: Context, matrix_models):
    from pipelines import batch_infer
    from pipelines.local import bigquery_emulator as redirect

    try:
        _, counters = batch_infer.run(argv(ctx, matrix_models), save_main_session=False)
    finally:
        redirect.restore()  # --bigquery_emulator patched this process's clients
    src, shape, _ = ctx.cell
    if shape == "arrays":  # every row reached the model as arrays, the rejected ones isolated from there
        bulk = len(ctx.records) if src in table.BULK_SOURCES else 0
        assert counters.get(READ_AS_ARRAYS, 0) == bulk, counters
    return read_sink(ctx, models.expected_outputs(ctx.cell[1], ctx.records, matrix_models[2]))


def stream_answers(ctx: Context, expected_count: int, timeout_s: float = 90):
    """Polls the stream's sink until expected_count rows + dead letters arrived (or the timeout)."""
    deadline, rows, dead = time.monotonic() + timeout_s, {}, []
    got = {"output": [], "errors": []}
    while time.monotonic() < deadline and len(rows) + len(dead) < expected_count:
        if ctx.cell[2] == "pubsub":
            for role in got:
                got[role] += ctx.pubsub.pull(ctx.pubsub.subscription(ctx.topics[role]), timeout_s=0.5)
            rows, dead = checkers.message_rows(got["output"]), checkers.message_dead(got["errors"])
        else:
            time.sleep(1.0)
            rows, dead = bigquery_answers(ctx)
    return rows, dead


def bigquery_answers(ctx: Context):
    from tests.test_stream_infer import table_exists

    client = ctx.bigquery.client()
    rows = (checkers.read_bigquery_rows(client, ctx.topics["output"])
            if table_exists(client, ctx.topics["output"]) else {})
    dead = (checkers.read_bigquery_dead(client, ctx.topics["errors"])
            if table_exists(client, ctx.topics["errors"]) else [])
    return rows, dead


def run_stream_cell(ctx: Context, matrix_models):
    from pipelines.local import bigquery_emulator as redirect
    from tests.test_stream_infer import publish_all, start, stop

    expected = models.expected_outputs(ctx.cell[1], ctx.records, matrix_models[2])
    count = len(ctx.records) + len(checkers.expected_dead(ctx.records, expected))
    result = start(argv(ctx, matrix_models))
    try:
        publish_all(ctx.topics["requests"], records.pubsub_messages(ctx.records))
        answers = stream_answers(ctx, count)
        time.sleep(1.0)  # a duplicate would arrive now
        if ctx.cell[2] == "pubsub":
            extra = stream_answers(ctx, 1, timeout_s=0.6)
            assert extra == ({}, []), f"answers after the last expected one: {extra}"
    finally:
        stop(result)
        redirect.restore()
    return answers


def check_refused(ctx: Context, matrix_models, reason: str, capsys) -> None:
    from pipelines import batch_infer, stream_infer

    entry = stream_infer if ctx.cell[0] in table.STREAM_SOURCES else batch_infer
    assert entry.main(argv(ctx, matrix_models)) == 2
    assert reason in capsys.readouterr().err
    assert glob.glob(ctx.prefix + "*") == [], "a refused job wrote files"


@pytest.mark.parametrize("cell", CELLS)
def test_cell(cell, matrix_models, tmp_path, request, capsys):
    ctx = make_context(cell, tmp_path, request)
    refused = table.expectation(cell).refused
    if refused:
        check_refused(ctx, matrix_models, refused, capsys)
        return
    runner = run_stream_cell if cell[0] in table.STREAM_SOURCES else run_batch_cell
    rows, dead = runner(ctx, matrix_models)
    expected = models.expected_outputs(cell[1], ctx.records, matrix_models[2])
    checkers.check_outputs(rows, dead, ctx.records, expected, bools_as_ints=cell[2] in checkers.INT64_BOOL_SINKS)


def test_the_fast_slice_holds_every_source_shape_and_sink():
    for axis, values in enumerate((table.SOURCES, table.SHAPES, table.SINKS)):
        assert {cell[axis] for cell in table.FAST} == set(values)
    runs = [c for c in table.FAST if not table.expectation(c).refused]
    assert {(c[1], c[2]) for c in runs} >= {(c[1], c[2]) for c in table.all_cells()
                                            if not table.expectation(c).refused}


def test_every_generated_spec_holds_every_feature_kind(matrix_models):
    spec = {f["name"]: f for f in records.SPEC["features"]}
    assert len(records.FEATURE_KINDS) == len(spec)
    assert spec["ints"].get("varlen") and spec["opt"].get("default") is not None
    assert spec["image"]["encoding"] == "raw"
    sample = records.cell_records("kinds-check")
    assert any("opt" not in r for r in sample) and any("opt" in r for r in sample)
    assert any(not r["ints"] for r in sample) and any(len(r["ints"]) > 1 for r in sample)
    assert len({r["id"] for r in sample}) == len(sample)
    for r in sample:
        r["text"].encode("utf-8")
        with pytest.raises(UnicodeDecodeError):
            r["blob"].decode("utf-8")


def test_records_are_the_same_in_a_fresh_process():
    """Determinism: another interpreter draws the same records for a cell (and a different cell
    draws different ones)."""
    cell = table.cell_id(table.all_cells()[0])
    code = f"from tests.matrix import records; print(records.digest(records.cell_records({cell!r})))"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                           env=dict(os.environ, PYTHONPATH=root, PYTHONHASHSEED="123"))
    assert fresh.stdout.strip() == records.digest(records.cell_records(cell))
    assert records.digest(records.cell_records(cell + "x")) != fresh.stdout.strip()
