"""BigQuery in and out against the real local BigQuery (local-bigquery, tools/bigquery_local),
started by the bigquery_emulator fixture: every column type into tf.Examples, a query as input,
and BigQuery -> model -> BigQuery end to end with dead letters in the errors table."""

import datetime
import decimal
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.serving.examples import feature_values, parse_example
from models.serving.feature_spec import Feature
from pipelines import batch_infer
from transforms.sources.bigquery import BigQueryInput, ReadKeyedBigQueryRows
from transforms.sources.text import InstanceOptions
from tests.test_batch_infer import expected_outputs, penguin_values

UTC = datetime.timezone.utc
TYPED_COLUMNS = [  # (name, type, mode)
    ("id", "STRING", "REQUIRED"), ("i", "INT64", "NULLABLE"), ("b", "BOOL", "NULLABLE"),
    ("f", "FLOAT64", "NULLABLE"), ("n", "NUMERIC", "NULLABLE"), ("s", "STRING", "NULLABLE"),
    ("by", "BYTES", "NULLABLE"), ("d", "DATE", "NULLABLE"), ("d_text", "DATE", "NULLABLE"),
    ("dt", "DATETIME", "NULLABLE"), ("dt_text", "DATETIME", "NULLABLE"),
    ("ts", "TIMESTAMP", "NULLABLE"), ("ts_text", "TIMESTAMP", "NULLABLE"),
    ("ri", "INT64", "REPEATED"), ("rf", "FLOAT64", "REPEATED"), ("rs", "STRING", "REPEATED"),
]
DAY = datetime.date(2024, 2, 29)
MOMENT = datetime.datetime(2024, 2, 29, 13, 14, 15)
STAMP = datetime.datetime(2024, 2, 29, 13, 14, 15, tzinfo=UTC)
FULL = dict(id="full", i=-7, b=True, f=1.5, n=decimal.Decimal("12.25"), s="héllo", by=b"\x00\xffab",
            d=DAY, d_text=DAY, dt=MOMENT, dt_text=MOMENT, ts=STAMP, ts_text=STAMP,
            ri=[1, 2, 3], rf=[0.5, -1.25], rs=["a", "b"])
NULLS = dict(FULL, id="nulls", i=None, b=None, n=None, by=None, rf=[])  # defaults fill them
MISSING = dict(FULL, id="missing", f=None, ri=[])  # required features: a convert dead letter

# The features the rows convert to: the documented mapping, type by type.
SPEC = (
    Feature("i", "int64", default=0), Feature("b", "int64", default=0), Feature("f", "float32"),
    Feature("n", "float32", default=-1.0), Feature("s", "string"), Feature("by", "string", default=b""),
    Feature("d", "int64"), Feature("d_text", "string"), Feature("dt", "float32"),
    Feature("dt_text", "string"), Feature("ts", "float32"), Feature("ts_text", "string"),
    Feature("ri", "int64", (3,)), Feature("rf", "float32", (2,), default=[9.0, 9.0]),
    Feature("rs", "string", (2,)),
)


def epoch(moment):
    return (moment.replace(tzinfo=UTC) - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()


def expected_features(row, datetime_text=b"2024-02-29T13:14:15"):
    """Independently of the code: what each documented rule gives for a row (absent: default)."""
    midnight = datetime.datetime.combine(DAY, datetime.time())
    out = {"f": [np.float32(row["f"])], "s": [row["s"].encode()], "d": [int(epoch(midnight))],
           "d_text": [b"2024-02-29"], "dt": [np.float32(epoch(MOMENT))],
           "dt_text": [datetime_text], "ts": [np.float32(epoch(STAMP))],
           "ts_text": [b"2024-02-29T13:14:15+00:00"], "ri": row["ri"], "rs": [b"a", b"b"]}
    if row["i"] is not None:
        out.update(i=[row["i"]], b=[1], n=[12.25], by=[row["by"]])
    if row["rf"]:
        out["rf"] = [0.5, -1.25]
    return out


def decoded(keyed):
    key, record = keyed
    example = parse_example(record)
    values = {name: [np.float32(v) if isinstance(v, float) else v for v in feature_values(example, name)]
              for name in sorted(example.features.feature)}
    return key, values


@pytest.fixture(scope="module")
def dataset(bigquery_emulator):
    from google.cloud import bigquery

    client = bigquery_emulator.client()
    name = "t_" + uuid.uuid4().hex[:8]
    client.create_dataset(name)
    typed = client.create_table(bigquery.Table(
        f"{bigquery_emulator.project}.{name}.typed",
        schema=[bigquery.SchemaField(*column) for column in TYPED_COLUMNS]))
    assert client.insert_rows(typed, [FULL, NULLS, MISSING]) == []
    yield name
    client.delete_dataset(name, delete_contents=True)


def pipeline_options(emulator):
    return PipelineOptions([], project=emulator.project, temp_location=f"gs://{emulator.bucket}/tmp")


@pytest.mark.parametrize("method", ["DIRECT_READ", "EXPORT"])
def test_every_column_type_converts_by_the_documented_rules(bigquery_emulated, dataset, method):
    emulator = bigquery_emulated
    source = BigQueryInput(table=f"{emulator.project}:{dataset}.typed", method=method,
                           project=emulator.project, gcs_location=f"gs://{emulator.bucket}/export")
    columns = tuple(name for name, _, _ in TYPED_COLUMNS)
    options = InstanceOptions(SPEC, key_field="id", included_fields=columns[1:])
    # DATETIME arrives as text in DIRECT_READ, as on real BigQuery. The emulator's EXPORT writes it
    # as an Avro timestamp (real BigQuery: text), so it reads back as a UTC datetime.
    text = b"2024-02-29T13:14:15" if method == "DIRECT_READ" else b"2024-02-29T13:14:15+00:00"
    with BeamTestPipeline(options=pipeline_options(emulator)) as p:
        chunks, dead = p | ReadKeyedBigQueryRows(source, options, columns)
        records = chunks | beam.FlatMap(lambda chunk: list(zip(chunk.keys, chunk.records)))
        assert_that(records | beam.Map(decoded), equal_to(
            [("full", expected_features(FULL, text)), ("nulls", expected_features(NULLS, text))]),
            label="records")
        assert_that(dead | beam.Map(lambda d: (d["key"], d["stage"], d["error"], d["source"])), equal_to([
            ("missing", "convert", "'f': required and missing (or null); 'ri': required and missing (or null)",
             {"table": source.table})]), label="dead")


def test_a_query_is_an_input(bigquery_emulated, dataset):
    emulator = bigquery_emulated
    source = BigQueryInput(query=f"SELECT id, i * 2 AS i, s FROM `{emulator.project}.{dataset}.typed` "
                                 "WHERE i IS NOT NULL", project=emulator.project,
                           gcs_location=f"gs://{emulator.bucket}/export")
    spec = (Feature("i", "int64"), Feature("s", "string"))
    with BeamTestPipeline(options=pipeline_options(emulator)) as p:
        records, _ = p | ReadKeyedBigQueryRows(source, InstanceOptions(spec, key_field="id"), ("id", "i", "s"),
                                               chunk_size=10)
        assert_that(records | beam.FlatMap(lambda c: [(k, decoded((k, r))[1], s) for k, r, s in zip(*c)]),
                    equal_to([("full", {"i": [-14], "s": [b"h\xc3\xa9llo"]}, {"query": source.query}),
                              ("missing", {"i": [-14], "s": [b"h\xc3\xa9llo"]}, {"query": source.query})]))


def emulator_flags(emulator):
    return ["--bigquery_emulator", emulator.rest_url, "--bigquery_emulator_grpc", emulator.grpc_address,
            "--storage_emulator", emulator.storage_url, "--project", emulator.project,
            "--temp_location", f"gs://{emulator.bucket}/tmp"]


@pytest.mark.parametrize("write_method, read_method", [("STREAMING_INSERTS", "DIRECT_READ"),
                                                       ("FILE_LOADS", "EXPORT")])
def test_bigquery_to_model_to_bigquery(bigquery_emulator, dataset, penguin_model, write_method, read_method,
                                       tmp_path):
    """Rows in = predictions + dead letters; each prediction equals the Keras model on that row."""
    from google.cloud import bigquery

    version_dir, keras_model = penguin_model
    emulator = bigquery_emulator
    client = emulator.client()
    suffix = write_method.lower()
    values = penguin_values(40, seed=11)
    table = client.create_table(bigquery.Table(f"{emulator.project}.{dataset}.penguins_{suffix}", schema=[
        bigquery.SchemaField("id", "STRING", "REQUIRED"), bigquery.SchemaField("measurements", "FLOAT64", "REPEATED"),
        bigquery.SchemaField("island", "INT64"), bigquery.SchemaField("note", "STRING")]))
    bad = [{"id": "short", "measurements": [1.0, 2.0], "island": 1, "note": "x"},
           {"id": "no-island", "measurements": [40.0, 17.0, 190.0, 4000.0], "island": None, "note": None},
           {"id": "big-island", "measurements": [40.0, 17.0, 190.0, 4000.0], "island": 7, "note": None}]
    assert client.insert_rows(table, [dict(v, note=f"n-{v['id']}") for v in values] + bad) == []
    out, errors = f"{emulator.project}:{dataset}.scored_{suffix}", f"{emulator.project}:{dataset}.errors_{suffix}"
    _, counters = batch_infer.run([
        "--input_table", f"{emulator.project}:{dataset}.penguins_{suffix}", "--key_column", "id",
        "--model", f"clf={version_dir}", "--output_table", out, "--errors_table", errors,
        "--passthrough", "note", "--with_source", "--manifest", str(tmp_path / "run.manifest.json"),
        "--bigquery_write_method", write_method, "--bigquery_read_method", read_method,
    ] + emulator_flags(emulator), save_main_session=False)

    rows = {r["key"]: r for r in client.query(f"SELECT * FROM `{out.replace(':', '.')}`").result()}
    dead = {r["key"]: r for r in client.query(f"SELECT * FROM `{errors.replace(':', '.')}`").result()}
    assert set(rows) == {v["id"] for v in values}
    assert {k: d["stage"] for k, d in dead.items()} == {"short": "convert", "no-island": "convert",
                                                        "big-island": "infer"}
    assert dead["big-island"]["model"] == "clf" and "measurements" in dead["short"]["error"]
    assert counters["records_read"] == 43 == len(rows) + len(dead)
    expected = expected_outputs(keras_model, values)
    for i, v in enumerate(values):
        row = rows[v["id"]]
        np.testing.assert_allclose(row["clf"]["probabilities"], expected["probabilities"][i], rtol=1e-6)
        assert row["clf"]["species"] == int(expected["species"][i])
        assert row["inputs"]["note"] == f"n-{v['id']}"
        assert row["source"]["table"] == f"{emulator.project}:{dataset}.penguins_{suffix}"
    columns = {f.name: f for f in client.get_table(out.replace(":", ".")).schema}
    assert columns["clf"].field_type == "RECORD"
    assert {f.name: (f.field_type, f.mode) for f in columns["clf"].fields} == {
        "probabilities": ("FLOAT", "REPEATED"), "species": ("INTEGER", "NULLABLE")}


def test_emulators_are_refused_for_remote_runners(capsys):
    code = batch_infer.main(["--input_table", "p:d.t", "--key_column", "id", "--model", "m",
                             "--output_table", "p:d.o", "--errors_table", "p:d.e", "--runner", "DataflowRunner",
                             "--bigquery_emulator", "http://127.0.0.1:9050", "--bigquery_emulator_grpc", "x:1"])
    assert code == 2 and "are for local runs" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--input_table", "p:d.t", "--model", "m", "--output", "o"], "--key_column is required"),
    (["--input_table", "p:d.t", "--input_query", "SELECT 1", "--key_column", "id", "--model", "m",
      "--output", "o"], "give one of --input_table, --input_query"),
    (["--input", "x", "--model", "m", "--output_table", "p:d.o"], "needs --errors_table or --errors"),
    (["--input", "x", "--model", "m", "--output", "o", "--feature_columns", "a"], "--feature_columns applies"),
    (["--input_table", "p:d.t", "--key_column", "id", "--model", "m", "--output", "o",
      "--bigquery_read_method", "FAST"], "--bigquery_read_method 'FAST' is not one of"),
    (["--input_table", "p:d.t", "--key_column", "id", "--model", "m", "--output", "o",
      "--bigquery_emulator", "http://127.0.0.1:1"], "needs --bigquery_emulator_grpc"),
])
def test_bigquery_flag_mistakes_are_reported_before_the_job(flags, message, capsys):
    assert batch_infer.main(flags) == 2
    assert message in capsys.readouterr().err
