"""BigQuery for the batch job: which rows to read, the tables to write, and local emulators."""

import dataclasses
from typing import Optional, Tuple

import apache_beam as beam

from pipelines.options import BatchInferOptions, OptionsError, field_list
from pipelines.runners import LocalRunner
from transforms.graph.model import ModelGraph, record_spec, takes_arrays
from transforms.sources.bigquery import BigQueryInput, ReadKeyedBigQueryRows
from transforms.sources.text import InstanceOptions

BIGQUERY = "bigquery"


@dataclasses.dataclass(frozen=True)
class BigQuerySettings:
    source: Optional[BigQueryInput] = None
    feature_columns: Tuple[str, ...] = ()
    output_table: Optional[str] = None
    errors_table: Optional[str] = None
    write_method: str = "FILE_LOADS"
    project: Optional[str] = None
    temp_location: Optional[str] = None  # gs:// staging for EXPORT reads and FILE_LOADS writes


def settings_from_options(opts: BatchInferOptions, project: Optional[str],
                          temp_location: Optional[str]) -> BigQuerySettings:
    source = None
    if opts.input_table or opts.input_query:
        source = BigQueryInput(table=opts.input_table, query=opts.input_query,
                               method=opts.bigquery_read_method.upper(), project=project,
                               gcs_location=temp_location)
    return BigQuerySettings(source=source, feature_columns=field_list(opts.feature_columns),
                            output_table=opts.output_table, errors_table=opts.errors_table,
                            write_method=opts.bigquery_write_method.upper(), project=project,
                            temp_location=temp_location)


def columns_to_read(graph: ModelGraph, key_column: str, feature_columns: Tuple[str, ...]) -> Tuple[str, ...]:
    """The key column, the feature columns (default: every feature the records must hold) and
    the passthrough columns, without repeats."""
    features = feature_columns or tuple(f.name for f in record_spec(graph))
    return tuple(dict.fromkeys((key_column,) + features + tuple(graph.passthrough)))


def read_bigquery(p: beam.Pipeline, job, chunk_size: int, chunk_bytes: Optional[int]):
    """WithDeadLetters(RecordChunks, dead letters) from the job's table or query."""
    settings = job.bigquery
    columns = columns_to_read(job.graph, job.key_feature, settings.feature_columns)
    options = InstanceOptions(record_spec(job.graph), key_field=job.key_feature, included_fields=columns[1:],
                              keep_key=job.sink.echoes_inputs,  # logs and examples carry their key
                              bulk_arrays=takes_arrays(job.graph))
    return p | f"Read[{settings.source.describe()[:60]}]" >> ReadKeyedBigQueryRows(
        settings.source, options, columns, chunk_size, chunk_bytes)


def activate_emulators(opts: BatchInferOptions, project: Optional[str], runner: Optional[LocalRunner]) -> bool:
    """Point this process's BigQuery and GCS clients at local emulators, when asked, where the
    redirection reaches the workers: refused for remote runners, and the BigQuery one (patched
    clients, this process only) for local workers in processes of their own; the GCS one is an
    environment variable, which those inherit. Returns whether anything was redirected."""
    if not (opts.bigquery_emulator or opts.storage_emulator):
        return False
    if runner is None:
        raise OptionsError("--bigquery_emulator/--storage_emulator are for local runs (DirectRunner): "
                           "remote workers cannot reach this machine's emulators")
    if opts.bigquery_emulator and runner.out_of_process:
        raise OptionsError(f"--bigquery_emulator redirects the BigQuery clients of this process only, and the "
                           f"{runner.describe()} scores in other processes: drop "
                           "--direct_running_mode=multi_processing for jobs on the local BigQuery")
    from pipelines.local import bigquery_emulator

    if opts.bigquery_emulator:
        bigquery_emulator.use_bigquery_emulator(opts.bigquery_emulator, opts.bigquery_emulator_grpc or "",
                                                project or "local")
    if opts.storage_emulator:
        bigquery_emulator.use_storage_emulator(opts.storage_emulator)
    return True
