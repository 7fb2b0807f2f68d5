"""What a job is, from its flags: BatchJob and StreamJob, and the model graph both score with.

Config (these dataclasses), build (build_pipeline in each entry point) and run stay separate, so
tests build the same pipeline from a job that the command line builds.
"""

import dataclasses
import sys
from typing import List, Optional, Tuple

from apache_beam.options.pipeline_options import GoogleCloudOptions

from models.serving.op_libraries import OpLibraryError, import_modules
from models.serving.model import load_serving_models
from pipelines import manifest
from pipelines.bigquery_io import BIGQUERY, BigQuerySettings, settings_from_options
from pipelines.inputs import input_format_of, listed_inputs, should_redistribute
from pipelines.options import (BatchInferOptions, OptionsError, StreamInferOptions, check_options,
                              check_stream_options, field_list)
from transforms.graph.file import load_graph_file
from transforms.graph.model import ModelGraph, chain_graph, parallel_graph
from transforms.runtime.gpu import GPU_BATCH, GpuSettings
from transforms.scoring.refresh import RefreshSettings
from models.serving.engines import DEFAULT_ENGINE
from transforms.scoring.output_ranks import with_output_ranks
from transforms.scoring.timeouts import DEFAULT_MODEL_TIMEOUT_S
from transforms.sinks.base import Sink, SinkConfig
from transforms.sinks.bigquery import STORAGE_WRITE_API, STREAMING_INSERTS
from transforms.sinks.examples import parse_output_features
from transforms.sinks.registry import DEFAULT_OUTPUT_FORMAT, chosen_sink
from transforms.sources.text_formats import TFRECORD

DEFAULT_STREAM_BATCH_SIZE = 256


def graph_from_options(opts: BatchInferOptions) -> ModelGraph:
    """The models to run: --graph FILE, or --model (one or several, in parallel or --chain), after
    the --op_library modules are imported."""
    try:
        import_modules(opts.op_library or ())
    except OpLibraryError as e:
        raise OptionsError(str(e)) from e
    passthrough = [p.strip() for p in (opts.passthrough or "").split(",") if p.strip()]
    if opts.graph:
        graph = load_graph_file(opts.graph, opts.engine, opts.signature, opts.allow_outside_paths,
                                opts.allow_graph_functions)
        if passthrough:
            graph = dataclasses.replace(graph, passthrough=tuple(passthrough))
        return graph
    models = load_serving_models(opts.model, opts.signature, opts.feature_spec or ())
    build = chain_graph if opts.chain else parallel_graph
    return build(models, opts.engine, passthrough)


@dataclasses.dataclass
class BatchJob:
    inputs: List[str]
    graph: ModelGraph  # one model is a graph of one node
    output: Optional[str]
    errors: Optional[str]
    key_feature: Optional[str] = None
    output_format: str = DEFAULT_OUTPUT_FORMAT
    engine: str = DEFAULT_ENGINE
    max_batch_size: Optional[int] = None
    max_batch_bytes: Optional[int] = None
    num_shards: int = 0
    row_per_model: bool = False
    input_format: str = TFRECORD
    included_fields: Tuple[str, ...] = ()
    excluded_fields: Tuple[str, ...] = ()
    with_source: bool = False
    bigquery: BigQuerySettings = BigQuerySettings()
    output_features: Tuple[Tuple[str, str], ...] = ()  # --output_format examples: (output, feature)
    output_compression: Optional[str] = None
    manifest: Optional[str] = None  # the run manifest's path (None: none is written)
    gpu: GpuSettings = GpuSettings()  # applied by the scoring DoFns before the models load
    redistribute: bool = False  # chunks spread over the workers after reading
    max_dead_letter_fraction: float = 0.5  # the error budget (pipelines.batch_infer.error_budget_problem)
    listed_inputs: Optional[List[str]] = None  # the files the launcher listed (None: not listed)
    model_timeout_s: float = DEFAULT_MODEL_TIMEOUT_S  # the longest a model call may take (0: no limit)
    op_libraries: Tuple[str, ...] = ()  # --op_library modules, imported by the scoring DoFns too

    @property
    def scoring_key_feature(self) -> Optional[str]:
        """The key feature read from each example; JSON/CSV/BigQuery readers key records themselves."""
        return self.key_feature if self.input_format == TFRECORD else None

    @property
    def sink(self) -> Sink:
        """The sink the predictions go through (transforms.sinks.registry)."""
        return chosen_sink(self.output_format, self.bigquery.output_table)

    @property
    def sink_config(self) -> SinkConfig:
        settings = self.bigquery
        return SinkConfig(output=self.output, num_shards=self.num_shards, row_per_model=self.row_per_model,
                          with_source=self.with_source, output_features=self.output_features,
                          output_compression=self.output_compression, table=settings.output_table,
                          write_method=settings.write_method, project=settings.project,
                          temp_location=settings.temp_location)

    @property
    def predictions_at(self) -> str:
        """Where the predictions go: the table, or the output files' pattern."""
        return self.sink.location(self.sink_config)


def job_from_options(opts: BatchInferOptions, cloud: Optional[GoogleCloudOptions] = None,
                     gpu: GpuSettings = GpuSettings(), gpu_batches: bool = False, offline: bool = False,
                     workers: Optional[int] = None) -> BatchJob:
    """gpu_batches: the job runs on GPU workers, so batch sizes the user left unset get GPU defaults.
    offline (a --dry_run): remote input patterns are not listed. workers: the worker processes that
    can score (None: not known at launch), for --redistribute auto."""
    check_options(opts)
    if opts.min_batch_size is not None:
        print("warning: --min_batch_size is deprecated and has no effect: every job scores chunks of up "
              "to --max_batch_size records and --max_batch_bytes of input", file=sys.stderr)
    graph = graph_from_options(opts)
    cloud = cloud or GoogleCloudOptions([])
    bigquery = settings_from_options(opts, cloud.project or ("local" if opts.bigquery_emulator else None),
                                     cloud.temp_location)
    errors = opts.errors or (f"{opts.output}.errors" if opts.output else None)
    listed = None if bigquery.source else listed_inputs(opts.input, offline)
    redistribute = should_redistribute(opts.redistribute, workers, None if listed is None else len(listed),
                                       gpu_batches, source_splits=bool(bigquery.source))
    job = BatchJob(inputs=list(opts.input or []), graph=graph, output=opts.output,
                   errors=errors, key_feature=opts.key_feature or opts.key_column,
                   output_format=opts.output_format, engine=opts.engine,
                   max_batch_size=opts.max_batch_size, max_batch_bytes=opts.max_batch_bytes,
                   num_shards=opts.num_shards, gpu=gpu, row_per_model=opts.row_per_model,
                   input_format=BIGQUERY if bigquery.source else input_format_of(opts.input, opts.input_format,
                                                                                 listed),
                   included_fields=field_list(opts.included_fields),
                   excluded_fields=field_list(opts.excluded_fields), with_source=opts.with_source,
                   bigquery=bigquery, output_features=tuple(parse_output_features(opts.output_features).items()),
                   output_compression=opts.output_compression,
                   manifest=opts.manifest or (manifest.manifest_path(opts.output) if opts.output else None),
                   redistribute=redistribute, max_dead_letter_fraction=opts.max_dead_letter_fraction,
                   listed_inputs=listed, model_timeout_s=opts.model_timeout_s,
                   op_libraries=tuple(opts.op_library or ()))
    return checked_job(job, gpu_batches)


def checked_job(job: BatchJob, gpu_batches: bool) -> BatchJob:
    """The job with what its sink and workers need settled (output ranks, GPU batch sizes), or
    OptionsError for what it cannot run."""
    if job.sink.needs_schema:  # every output's rank
        job.graph = with_output_ranks(job.graph)
    if gpu_batches:
        job.max_batch_size = job.max_batch_size or GPU_BATCH.max_batch_size
        job.max_batch_bytes = job.max_batch_bytes or GPU_BATCH.max_batch_bytes
    if job.input_format in (TFRECORD, BIGQUERY) and (job.included_fields or job.excluded_fields):
        raise OptionsError("--included_fields/--excluded_fields apply to JSON Lines, CSV and Parquet inputs "
                           "(BigQuery: --feature_columns)")
    problems = job.sink.graph_problems(job.graph, job.sink_config)
    if problems:
        raise OptionsError("; ".join(problems))
    return job


@dataclasses.dataclass
class StreamJob:
    graph: ModelGraph
    input_subscription: Optional[str]
    input_topic: Optional[str]
    output_topic: Optional[str]
    errors_topic: Optional[str]
    output_table: Optional[str]
    errors_table: Optional[str]
    payload_format: str
    key_attribute: Optional[str]
    max_payload_bytes: Optional[int]
    max_batch_size: int
    max_batch_latency_s: float
    with_source: bool
    bigquery_write_method: str
    project: Optional[str] = None
    gpu: GpuSettings = GpuSettings()
    ack_when_answered: bool = False  # local runs: at-least-once (pipelines/local/pubsub_acks.py)
    refresh: RefreshSettings = RefreshSettings()  # how new model versions are found (none: as launched)
    model_timeout_s: float = DEFAULT_MODEL_TIMEOUT_S  # the longest a model call may take (0: no limit)
    op_libraries: Tuple[str, ...] = ()  # --op_library modules, imported by the scoring DoFns too


def stream_job_from_options(stream: StreamInferOptions, shared: BatchInferOptions, project: Optional[str],
                            gpu: GpuSettings = GpuSettings(), on_gpus: bool = False) -> StreamJob:
    """The stream's job; shared holds the flags it has in common with batch_infer (models, engine,
    batch size, BigQuery tables). Raises OptionsError before any model loads."""
    check_stream_options(stream, shared)
    default_batch = GPU_BATCH.stream_max_batch_size if on_gpus else DEFAULT_STREAM_BATCH_SIZE
    # load jobs need a triggering frequency; a stream inserts rows
    method = STORAGE_WRITE_API if shared.bigquery_write_method.upper() == STORAGE_WRITE_API else STREAMING_INSERTS
    graph = graph_from_options(shared)
    if stream.model_refresh_s and not any(n.model.base_path for n in graph.nodes):
        raise OptionsError("--model_refresh_s watches models given as TF Serving base directories "
                           "(--model NAME=BASE_DIR, whose highest numbered subdirectory serves); every model "
                           f"here is a version directory: {', '.join(n.model.path for n in graph.nodes)}")
    if shared.output_table:  # a schema: every output's rank
        graph = with_output_ranks(graph)
    return StreamJob(
        graph=graph, input_subscription=stream.input_subscription,
        input_topic=stream.input_topic, output_topic=stream.output_topic, errors_topic=stream.errors_topic,
        output_table=shared.output_table, errors_table=shared.errors_table,
        payload_format=stream.payload_format, key_attribute=stream.key_attribute,
        max_payload_bytes=stream.max_payload_bytes, max_batch_size=shared.max_batch_size or default_batch,
        max_batch_latency_s=stream.max_batch_latency_ms / 1000.0, with_source=shared.with_source,
        bigquery_write_method=method, project=project, gpu=gpu,
        refresh=RefreshSettings(stream.model_refresh_s, stream.model_refresh_topic),
        model_timeout_s=shared.model_timeout_s, op_libraries=tuple(shared.op_library or ()))
