"""Plain Beam against the local BigQuery + GCS (tools/bigquery_local, pipelines.local.bigquery_emulator).

Proves the plumbing, not project code: every ReadFromBigQuery method and the STREAMING_INSERTS and
FILE_LOADS writes, on the DirectRunner (default in_memory mode). The expected rows pin down the
Python type each BigQuery type arrives as, per read method (the row -> tf.Example conversion
depends on it). Where the emulator differs from real BigQuery, the comment says so.
"""

import datetime
import decimal
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

# The fixtures bigquery_emulator and bigquery_emulated come from tests/bigquery_local.py (conftest).

UTC = datetime.timezone.utc
Read = beam.io.ReadFromBigQuery.Method
Write = beam.io.WriteToBigQuery.Method

TYPED_SCHEMA = [  # (name, type, mode)
    ("id", "INT64", "REQUIRED"), ("i", "INT64", "NULLABLE"), ("b", "BOOL", "NULLABLE"),
    ("f", "FLOAT64", "NULLABLE"), ("n", "NUMERIC", "NULLABLE"), ("s", "STRING", "NULLABLE"),
    ("by", "BYTES", "NULLABLE"), ("d", "DATE", "NULLABLE"), ("dt", "DATETIME", "NULLABLE"),
    ("ts", "TIMESTAMP", "NULLABLE"), ("ri", "INT64", "REPEATED"), ("rf", "FLOAT64", "REPEATED"),
    ("rs", "STRING", "REPEATED"),
]
FULL = dict(id=1, i=-7, b=True, f=1.5, n=decimal.Decimal("12.345"), s="héllo", by=b"\x00\xffab",
            d=datetime.date(2024, 2, 29), dt=datetime.datetime(2024, 2, 29, 13, 14, 15, 123456),
            ts=datetime.datetime(2024, 2, 29, 13, 14, 15, 654321, tzinfo=UTC),
            ri=[1, 2, 3], rf=[0.5, -1.25], rs=["a", "b"])
EMPTY = dict(id=2, i=None, b=None, f=None, n=None, s=None, by=None, d=None, dt=None, ts=None,
             ri=[], rf=[], rs=[])  # NULL in every nullable column; REPEATED reads back as []


def typed(row):
    """{column: (Python type name, value)}: equal_to then checks types as well as values."""
    return {name: (type(value).__name__, value) for name, value in row.items()}


def expected(datetime_as):
    """FULL and EMPTY as a read gives them: all types are the same for every method except DATETIME.

    INT64 int, BOOL bool, FLOAT64 float, NUMERIC decimal.Decimal (scale 9: Decimal('12.345000000')),
    STRING str, BYTES bytes (raw, not base64), DATE datetime.date, TIMESTAMP datetime.datetime
    with tzinfo UTC, REPEATED list (empty list, never None), NULL None.
    """
    full = dict(FULL, dt=datetime_as(FULL["dt"]))
    return [typed(full), typed(EMPTY)]


# DIRECT_READ (Avro; Beam's default use_native_datetime=False): DATETIME is an ISO string, as on
# real BigQuery. EXPORT (Avro with logical types): the emulator exports DATETIME as
# timestamp-micros, so it arrives as a UTC-aware datetime; real BigQuery exports a string
# ('2024-02-29T13:14:15.123456'), which is what Beam documents. Converters must take both.
DATETIME_DIRECT = datetime.datetime.isoformat
DATETIME_EXPORT = lambda dt: dt.replace(tzinfo=UTC)  # noqa: E731


def options(emulator, **extra):
    return PipelineOptions([], project=emulator.project,
                           temp_location=f"gs://{emulator.bucket}/tmp", **extra)


@pytest.fixture(scope="module")
def dataset(bigquery_emulator):
    """A fresh dataset holding `typed` (every column type we use; one full row, one NULL row)."""
    from google.cloud import bigquery

    client = bigquery_emulator.client()
    name = "smoke_" + uuid.uuid4().hex[:8]
    client.create_dataset(name)
    table = client.create_table(bigquery.Table(
        f"{bigquery_emulator.project}.{name}.typed",
        schema=[bigquery.SchemaField(*field) for field in TYPED_SCHEMA]))
    assert client.insert_rows(table, [FULL, EMPTY]) == []
    yield name
    client.delete_dataset(name, delete_contents=True)


@pytest.mark.parametrize("how, datetime_as", [
    (dict(method=Read.DIRECT_READ), DATETIME_DIRECT),
    (dict(method=Read.EXPORT), DATETIME_EXPORT),
    (dict(method=Read.DIRECT_READ, use_native_datetime=True), lambda dt: dt),  # Arrow: naive
], ids=["direct_read", "export", "direct_read_arrow"])
def test_read_table(bigquery_emulated, dataset, how, datetime_as):
    emulator = bigquery_emulated
    with BeamTestPipeline(options=options(emulator)) as p:
        rows = p | beam.io.ReadFromBigQuery(
            table=f"{emulator.project}:{dataset}.typed",
            gcs_location=f"gs://{emulator.bucket}/export", **how)
        assert_that(rows | beam.Map(typed), equal_to(expected(datetime_as)))


@pytest.mark.parametrize("method, datetime_as", [
    (Read.EXPORT, DATETIME_EXPORT),  # the default method for a query
    (Read.DIRECT_READ, DATETIME_DIRECT),
], ids=["export", "direct_read"])
def test_read_query(bigquery_emulated, dataset, method, datetime_as):
    emulator = bigquery_emulated
    with BeamTestPipeline(options=options(emulator)) as p:
        rows = p | beam.io.ReadFromBigQuery(
            query=f"SELECT * FROM `{emulator.project}.{dataset}.typed` WHERE id > 0",
            use_standard_sql=True, method=method, gcs_location=f"gs://{emulator.bucket}/export")
        assert_that(rows | beam.Map(typed), equal_to(expected(datetime_as)))


OUT_SCHEMA = {"fields": [
    {"name": "key", "type": "STRING", "mode": "REQUIRED"},
    {"name": "model", "type": "RECORD", "mode": "NULLABLE", "fields": [
        {"name": "score", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "probs", "type": "FLOAT64", "mode": "REPEATED"},
        {"name": "label", "type": "STRING", "mode": "NULLABLE"}]},
    {"name": "items", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "name", "type": "STRING", "mode": "NULLABLE"},
        {"name": "value", "type": "INT64", "mode": "NULLABLE"}]},
    {"name": "probs", "type": "FLOAT", "mode": "REPEATED"},
]}
OUT_ROWS = [
    {"key": "a", "model": {"score": 0.25, "probs": [0.1, 0.9], "label": "x"},
     "items": [{"name": "n1", "value": 1}, {"name": "n2", "value": 2}], "probs": [1.5, 2.5]},
    {"key": "b", "model": None, "items": [], "probs": []},
    {"key": "c", "model": {"score": None, "probs": [], "label": None},
     "items": [{"name": None, "value": None}], "probs": [0.0]},
]


@pytest.mark.parametrize("how", [
    dict(method=Write.STREAMING_INSERTS),
    dict(method=Write.FILE_LOADS),  # temp files: newline-delimited JSON on the GCS emulator
    dict(method=Write.FILE_LOADS, temp_file_format="AVRO"),
], ids=["streaming_inserts", "file_loads_json", "file_loads_avro"])
def test_write_creates_table_and_round_trips(bigquery_emulated, dataset, how):
    emulator = bigquery_emulated
    table = f"out_{uuid.uuid4().hex[:8]}"
    with BeamTestPipeline(options=options(emulator)) as p:
        _ = p | beam.Create(OUT_ROWS) | beam.io.WriteToBigQuery(
            table=f"{emulator.project}:{dataset}.{table}", schema=OUT_SCHEMA,
            create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
            custom_gcs_temp_location=f"gs://{emulator.bucket}/loads", **how)

    client = emulator.client()
    created = client.get_table(f"{emulator.project}.{dataset}.{table}")
    assert [(f.name, f.field_type) for f in created.schema] == [
        ("key", "STRING"), ("model", "RECORD"), ("items", "RECORD"), ("probs", "FLOAT")]
    assert [f.mode for f in created.schema][1:] == ["NULLABLE", "REPEATED", "REPEATED"]
    # (A table created by a load job reports `key` NULLABLE, not REQUIRED: an emulator quirk.)
    assert [(f.name, f.mode) for f in created.schema[1].fields] == [
        ("score", "NULLABLE"), ("probs", "REPEATED"), ("label", "NULLABLE")]
    got = [dict(row) for row in client.query_and_wait(
        f"SELECT * FROM `{dataset}.{table}` ORDER BY key")]
    assert got == OUT_ROWS

    # And back through Beam: RECORD -> dict, REPEATED RECORD -> list of dicts.
    with BeamTestPipeline(options=options(emulator)) as p:
        rows = p | beam.io.ReadFromBigQuery(
            table=f"{emulator.project}:{dataset}.{table}", method=Read.DIRECT_READ)
        assert_that(rows, equal_to(OUT_ROWS))


def test_redirection_is_undone(bigquery_emulator):
    """After a test, bigquery_emulated has put Beam's and google-auth's originals back."""
    import google.auth
    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
    from google.cloud import bigquery_storage_v1

    assert BigqueryV2.BASE_URL == "https://bigquery.googleapis.com/bigquery/v2/"
    assert google.auth.default.__module__ == "google.auth._default"
    assert bigquery_storage_v1.BigQueryReadClient.__module__.startswith("google.cloud")
    bigquery_emulator.activate()
    bigquery_emulator.activate()  # idempotent: patching twice still restores the originals
    bigquery_emulator.deactivate()
    assert BigqueryV2.BASE_URL == "https://bigquery.googleapis.com/bigquery/v2/"
    assert google.auth.default.__module__ == "google.auth._default"
    assert bigquery_storage_v1.BigQueryReadClient.__module__.startswith("google.cloud")
