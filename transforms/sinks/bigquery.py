"""WriteRowsToBigQuery: prediction rows or dead letters into a BigQuery table, nothing lost.

The table is created when needed with the schema given (transforms.sinks.bigquery_schema) and rows are
appended. STREAMING_INSERTS and FILE_LOADS work with the Python SDK alone; STORAGE_WRITE_API runs
through Beam's Java expansion service (a jar Beam downloads, so not offline). With
STREAMING_INSERTS, a row BigQuery refuses for good comes back as a dead letter at stage write
(its prediction no longer counted), so inputs = predictions + dead letters still holds; with
FILE_LOADS a refused load fails the job with BigQuery's error.
"""

from typing import Any, Dict, List, Mapping, Optional

import apache_beam as beam
import orjson
from apache_beam.io.gcp.bigquery_tools import RetryStrategy

from transforms.graph.model import ModelGraph, feature_types
from transforms.records.dead_letters import WRITE, dead_letter
from transforms.runtime.accounting import AccountedDoFn
from transforms.sinks.base import Sink, SinkConfig
from transforms.sinks.bigquery_schema import fit_record, prediction_schema
from transforms.sinks.format import FormatRows

STREAMING_INSERTS, FILE_LOADS, STORAGE_WRITE_API = "STREAMING_INSERTS", "FILE_LOADS", "STORAGE_WRITE_API"
WRITE_METHODS = (STREAMING_INSERTS, FILE_LOADS, STORAGE_WRITE_API)


def refused_row_dead_letter(failed: Any) -> Dict[str, Any]:
    """The dead letter of a prediction row BigQuery refused ((destination, row, errors), as
    WriteToBigQuery reports it): the row as JSON is its raw input."""
    destination, row, errors = (tuple(failed) + (None,))[:3]
    row = row if isinstance(row, Mapping) else {}
    return dead_letter(WRITE, f"BigQuery refused the row for {destination}: {errors}", key=row.get("key"),
                       raw=orjson.dumps(row, default=str), source=row.get("source"),
                       error_type="BigQueryInsertError")


class RefusedRowsFn(AccountedDoFn):
    """Rows BigQuery refused -> their dead letters; each no longer counts as a prediction."""


    def process(self, failed):
        row = refused_row_dead_letter(failed)
        self._accounting.refused_prediction(row)
        yield row


class WriteRowsToBigQuery(beam.PTransform):
    """Rows -> table (created if needed); returns the rows BigQuery refused for good, as
    (destination, row, errors) (STREAMING_INSERTS; always empty with the other methods)."""

    def __init__(self, table: str, schema: Mapping[str, Any], method: str = STREAMING_INSERTS,
                 project: Optional[str] = None, gcs_temp_location: Optional[str] = None):
        super().__init__()
        if method not in WRITE_METHODS:
            raise ValueError(f"BigQuery write method {method!r} is not one of {', '.join(WRITE_METHODS)}")
        self._table = table
        self._schema = dict(schema)
        self._method = method
        self._project = project
        self._gcs_temp_location = gcs_temp_location

    def expand(self, rows):
        fields = self._schema["fields"]
        kwargs = {}
        if self._method == STREAMING_INSERTS:
            kwargs["insert_retry_strategy"] = RetryStrategy.RETRY_ON_TRANSIENT_ERROR
        if self._gcs_temp_location:
            kwargs["custom_gcs_temp_location"] = self._gcs_temp_location
        result = (rows
                  | "FitSchema" >> beam.Map(fit_record, fields)
                  | "WriteToBigQuery" >> beam.io.WriteToBigQuery(
                      self._table, schema=self._schema, method=self._method, project=self._project,
                      create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                      write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND, **kwargs))
        if self._method != STREAMING_INSERTS:
            return rows.pipeline | "NoRefusedRows" >> beam.Create([])
        return result.failed_rows_with_errors


@beam.ptransform_fn
def WritePredictionRows(rows, graph: ModelGraph, table: str, method: str = STREAMING_INSERTS,
                        project: Optional[str] = None, temp_location: Optional[str] = None,
                        with_source: bool = False, with_versions: bool = False):
    """Prediction row dicts -> `table`, its schema derived from the graph (created if needed);
    returns the dead letters (stage write) of the rows BigQuery refused. Batch and stream jobs
    write predictions through this one transform. with_versions: rows name their models' versions
    (a refreshed stream)."""
    spec = feature_types(graph)
    refused = rows | "Write" >> WriteRowsToBigQuery(
        table, prediction_schema(graph, spec, with_source, with_versions), method, project, temp_location)
    return refused | "RefusedRows" >> beam.ParDo(RefusedRowsFn())


class BigQuerySink(Sink):
    """--output_table: one row per key in a table whose schema comes from the graph's signatures."""

    name = "bigquery"
    suffix = ""
    writes_files = False
    needs_schema = True

    def flag_problems(self, config: SinkConfig) -> List[str]:
        if config.row_per_model:
            return ["--row_per_model writes files; a BigQuery table holds one row per key"]
        return []

    def location(self, config: SinkConfig) -> str:
        return config.table

    def write(self, scored, graph, config: SinkConfig):
        rows, unformatted = scored | "ToRows" >> FormatRows(graph, with_source=config.with_source, as_dicts=True)
        refused = rows | "WriteToTable" >> WritePredictionRows(
            graph, config.table, config.write_method, config.project, config.temp_location, config.with_source)
        return (unformatted, refused) | "Unwritten" >> beam.Flatten()
