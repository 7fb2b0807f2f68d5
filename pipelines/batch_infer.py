"""python -m pipelines.batch_infer: score TFRecord files of tf.Example with SavedModels.

    python -m pipelines.batch_infer --input 'data/*.tfrecord.gz' --model models/clf
        --output out/predictions [--key_feature id] [--errors out/errors] [--runner ...]
    ... --model five=models/five --model ten=models/ten [--chain]   # parallel, or in sequence
    ... --graph graph.yaml                                            # any wiring, post-processing
    ... --input 'data/*.jsonl' (or .csv) --key_feature id             # instances, converted by the spec

Every run writes OUTPUT.manifest.json: inputs, model hashes, options, counts, versions.

With no arguments it runs the embedded demo (pipelines/local/demo.py) on the DirectRunner.
"""

import dataclasses
import logging
import sys
import time
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions, SetupOptions

from models.serving_model import ModelContractError, load_serving_models
from pipelines import manifest
from pipelines.bigquery_io import (BIGQUERY, BigQuerySettings, activate_emulators, settings_from_options,
                                   write_dead_letters, write_predictions)
from pipelines.dataflow import is_dry_run, normalize_dry_run_argv, prepare_runner_options, report_dry_run
from pipelines.gpu_options import DataflowJobOptions, gpu_settings
from pipelines.inputs import input_format_of, read_records
from pipelines.options import BatchInferOptions, OptionsError, check_options, field_list, print_options_help
from pipelines.runners import is_local
from transforms.runtime import metrics
from transforms.sinks.bigquery_schema import SchemaError
from transforms.scoring.chunked import ChunkToJsonLinesFn, ChunkToPredictionLogsFn, ScoreChunks
from transforms.records.dead_letters import DEAD_LETTER_TAG
from transforms.runtime.gpu import GPU_BATCH, GpuSettings
from transforms.graph.model import GraphError, ModelGraph, chain_graph, parallel_graph
from transforms.graph.file import load_graph_file
from transforms.inference import DEFAULT_ENGINE
from transforms.scoring.model_graph import MODEL_DEAD_LETTERS_PREFIX, MODEL_OUTPUTS_PREFIX, GraphScoreToLinesFn, ScoreGraphChunks
from transforms.score import DEAD_LETTERS, OUTPUTS, ROWS, ScoreKeyedExamples
from transforms.sinks.files import WriteJsonLines, WritePredictionLogs
from transforms.sources.text_formats import TFRECORD
from transforms.sources.tfrecord import NoInputFilesError


@dataclasses.dataclass
class BatchJob:
    inputs: List[str]
    graph: ModelGraph
    output: Optional[str]
    errors: Optional[str]
    key_feature: Optional[str] = None
    output_format: str = "jsonl"
    engine: str = DEFAULT_ENGINE
    min_batch_size: Optional[int] = None
    max_batch_size: Optional[int] = None
    max_batch_bytes: Optional[int] = None
    num_shards: int = 0
    row_per_model: bool = False
    input_format: str = TFRECORD
    included_fields: Tuple[str, ...] = ()
    excluded_fields: Tuple[str, ...] = ()
    with_source: bool = False
    bigquery: BigQuerySettings = BigQuerySettings()
    manifest: Optional[str] = None  # the run manifest's path (None: none is written)
    gpu: GpuSettings = GpuSettings()  # applied by the scoring DoFns before the models load

    @property
    def scoring_key_feature(self) -> Optional[str]:
        """The key feature read from each example; JSON/CSV/BigQuery readers key records themselves."""
        return self.key_feature if self.input_format == TFRECORD else None

    @property
    def model(self):
        """The model of a one-model job (the single-model paths); None for a graph."""
        if self.is_graph:
            return None
        return self.graph.nodes[0].model

    @property
    def is_graph(self) -> bool:
        """Several models, post-processing, passthrough features, one row per model or sources."""
        node = self.graph.nodes[0]
        return (len(self.graph.nodes) > 1 or bool(node.postprocess) or bool(self.graph.passthrough)
                or self.row_per_model or self.with_source or bool(self.bigquery.output_table))


def graph_from_options(opts: BatchInferOptions) -> ModelGraph:
    passthrough = [p.strip() for p in (opts.passthrough or "").split(",") if p.strip()]
    if opts.graph:
        graph = load_graph_file(opts.graph, opts.engine, opts.signature)
        if passthrough:
            graph = dataclasses.replace(graph, passthrough=tuple(passthrough))
        return graph
    models = load_serving_models(opts.model, opts.signature)
    build = chain_graph if opts.chain else parallel_graph
    return build(models, opts.engine, passthrough)


def job_from_options(opts: BatchInferOptions, cloud: Optional[GoogleCloudOptions] = None,
                     gpu: GpuSettings = GpuSettings(), gpu_batches: bool = False) -> BatchJob:
    """gpu_batches: the job runs on GPU workers, so batch sizes the user left unset get GPU defaults."""
    check_options(opts)
    graph = graph_from_options(opts)
    cloud = cloud or GoogleCloudOptions([])
    bigquery = settings_from_options(opts, cloud.project or ("local" if opts.bigquery_emulator else None),
                                     cloud.temp_location)
    errors = opts.errors or (f"{opts.output}.errors" if opts.output else None)
    job = BatchJob(inputs=list(opts.input or []), graph=graph, output=opts.output,
                   errors=errors, key_feature=opts.key_feature or opts.key_column,
                   output_format=opts.output_format, engine=opts.engine,
                   min_batch_size=opts.min_batch_size, max_batch_size=opts.max_batch_size,
                   max_batch_bytes=opts.max_batch_bytes, num_shards=opts.num_shards, gpu=gpu,
                   row_per_model=opts.row_per_model,
                   input_format=BIGQUERY if bigquery.source else input_format_of(opts.input, opts.input_format),
                   included_fields=field_list(opts.included_fields),
                   excluded_fields=field_list(opts.excluded_fields), with_source=opts.with_source,
                   bigquery=bigquery,
                   manifest=opts.manifest or (manifest.manifest_path(opts.output) if opts.output else None))
    if gpu_batches:
        job.max_batch_size = job.max_batch_size or GPU_BATCH.max_batch_size
        job.max_batch_bytes = job.max_batch_bytes or GPU_BATCH.max_batch_bytes
    if job.input_format in (TFRECORD, BIGQUERY) and (job.included_fields or job.excluded_fields):
        raise OptionsError("--included_fields/--excluded_fields apply to JSON Lines and CSV inputs "
                           "(BigQuery: --feature_columns)")
    if opts.output_format == "tfrecord":
        if job.is_graph:
            raise OptionsError("--output_format tfrecord writes one model's PredictionLogs; a graph "
                               "(several models, post-processing, passthrough) writes jsonl")
        if job.model.method != "tensorflow/serving/predict" and job.engine == "fast":
            raise OptionsError(f"--output_format tfrecord with the fast engine writes predict logs; the "
                               f"signature's method is {job.model.method}: use --engine tfx-bsl")
    return job


def build_record_pipeline(p: beam.Pipeline, job: BatchJob):
    """One record per element (tfx-bsl engine): read -> validate -> RunInference -> rows."""
    records, unreadable = read_records(p, job, chunked=False)
    scored = records | "Score" >> ScoreKeyedExamples(
        job.model, job.engine, job.scoring_key_feature, job.min_batch_size, job.max_batch_size, job.gpu)
    if job.output_format == "tfrecord":
        scored[OUTPUTS] | "WritePredictionLogs" >> WritePredictionLogs(job.output, job.num_shards)
    else:
        scored[ROWS] | "WritePredictions" >> WriteJsonLines(job.output, job.num_shards)
    return [unreadable, scored[DEAD_LETTERS]]


def build_chunked_pipeline(p: beam.Pipeline, job: BatchJob):
    """A chunk of records per element (fast engine): read chunks -> score -> write chunk text."""
    chunks, unreadable = read_records(p, job, chunked=True)
    scored, unscored = chunks | "Score" >> ScoreChunks(job.model, job.scoring_key_feature, job.gpu)
    if job.output_format == "tfrecord":
        (scored
         | "ToPredictionLogs" >> beam.ParDo(ChunkToPredictionLogsFn(job.model.signature))
         | "WritePredictionLogs" >> WritePredictionLogs(job.output, job.num_shards))
        return [unreadable, unscored]
    text = scored | "ToJsonLines" >> beam.ParDo(ChunkToJsonLinesFn(job.model.name)).with_outputs(
        DEAD_LETTER_TAG, main="text")
    text.text | "WritePredictions" >> WriteJsonLines(job.output, job.num_shards, preformatted=True)
    return [unreadable, unscored, text[DEAD_LETTER_TAG]]


def build_graph_pipeline(p: beam.Pipeline, job: BatchJob):
    """Several models (or post-processing) per chunk: read chunks -> score the graph -> rows."""
    chunks, unreadable = read_records(p, job, chunked=True)
    scored, unscored = chunks | "Score" >> ScoreGraphChunks(job.graph, job.scoring_key_feature, job.gpu)
    to_table = bool(job.bigquery.output_table)
    text = scored | "ToJsonLines" >> beam.ParDo(GraphScoreToLinesFn(
        job.graph, job.row_per_model, as_rows=to_table)).with_outputs(DEAD_LETTER_TAG, main="text")
    if to_table:
        refused = write_predictions(text.text, job)
        return [unreadable, unscored, text[DEAD_LETTER_TAG], refused]
    text.text | "WritePredictions" >> WriteJsonLines(job.output, job.num_shards, preformatted=True)
    return [unreadable, unscored, text[DEAD_LETTER_TAG]]


def build_pipeline(p: beam.Pipeline, job: BatchJob) -> None:
    if job.is_graph:
        build = build_graph_pipeline
    else:
        build = build_chunked_pipeline if job.engine == "fast" else build_record_pipeline
    dead_letters = build(p, job) | "AllDeadLetters" >> beam.Flatten()
    if job.bigquery.errors_table:
        write_dead_letters(dead_letters, job)
    else:
        dead_letters | "WriteDeadLetters" >> WriteJsonLines(job.errors)


def warn_about_unsafe_runner_modes(options: PipelineOptions) -> Optional[str]:
    """Beam 2.77's FnApiRunner in multi_threading mode can drop elements that cross a stage
    boundary (a timed flush of its output buffer races the writing thread; docs/ARCHITECTURE.md,
    "Local runs"). We keep the DirectRunner's default in_memory mode; say so if a user asks."""
    if is_local(options) and options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        message = ("warning: --direct_running_mode=multi_threading can silently drop elements on "
                   "Beam 2.77 (see docs/ARCHITECTURE.md, 'Local runs'); the default in_memory mode does not")
        print(message, file=sys.stderr)
        return message
    return None


def summarize(job: BatchJob, counters: dict, seconds: float) -> str:
    read = counters.get(metrics.RECORDS_READ, 0)
    written = counters.get(metrics.PREDICTIONS_WRITTEN, 0)
    dead = sum(v for k, v in counters.items() if k.startswith(metrics.DEAD_LETTER_PREFIX))
    ext = "tfrecord" if job.output_format == "tfrecord" else "jsonl"
    if job.is_graph:
        models = ["models:"] + [f"  {line}" for line in job.graph.describe().splitlines()] + [
            f"  {name}: outputs {counters.get(MODEL_OUTPUTS_PREFIX + name, 0):,}, "
            f"dead letters {counters.get(MODEL_DEAD_LETTERS_PREFIX + name, 0):,}" for name in job.graph.names]
    else:
        models = [f"model:        {job.model.name} = {job.model.path} ({job.engine} engine)"]
    return "\n".join(models + [
        f"predictions:  {job.bigquery.output_table or f'{job.output}-*.{ext}'}",
        f"dead letters: {job.bigquery.errors_table or f'{job.errors}-*.jsonl'}",
        f"manifest:     {job.manifest or 'none (give --manifest PATH)'}",
        f"records in {read + counters.get(metrics.DEAD_LETTER_PREFIX + 'read', 0):,}; "
        f"predictions out {written:,}; dead letters {dead:,}",
        f"wall time {seconds:.1f} s; {read / max(seconds, 1e-9):,.0f} records/s end to end",
        "counters:",
        metrics.format_counters(counters),
    ])


def print_help() -> None:
    print_options_help("python -m pipelines.batch_infer", __doc__,
                       [(BatchInferOptions, None), (DataflowJobOptions, "Dataflow")],
                       "Standard Beam options (--runner, --project, --region, --temp_location, --sdk_container_image, ...)\n"
                       "pass through. With --runner DataflowRunner, --dry_run builds the job without submitting it.")


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = True,
        test_pipeline: Optional[beam.Pipeline] = None):
    """Builds and runs the job; returns (PipelineResult, counters). Raises on bad flags or models."""
    argv = normalize_dry_run_argv(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return None, {}
    options = PipelineOptions(argv)
    opts = options.view_as(BatchInferOptions)
    if not (opts.input or opts.input_table or opts.input_query or opts.model or opts.output
            or opts.output_table) and test_pipeline is None:
        from pipelines.local import demo

        argv = argv + demo.demo_args()
        options = PipelineOptions(argv)
        opts = options.view_as(BatchInferOptions)
        print(f"No --input/--model/--output given: running the embedded demo\n  {' '.join(demo.demo_args())}")
    options.view_as(SetupOptions).save_main_session = save_main_session
    warn_about_unsafe_runner_modes(options)
    cloud = options.view_as(GoogleCloudOptions)
    redirected = activate_emulators(opts, cloud.project, is_local(options))
    try:
        job = job_from_options(opts, cloud, gpu_settings(options), bool(options.view_as(DataflowJobOptions).gpu))
        for warning in prepare_runner_options(options, worker_paths(job)):
            print(f"warning: {warning}", file=sys.stderr)
        return _run_job(job, options, test_pipeline)
    finally:
        if redirected:
            from pipelines.local import bigquery_emulator

            bigquery_emulator.restore()


def worker_paths(job: BatchJob) -> List[str]:
    """The files workers read or write: inputs, models, outputs (not the launcher's manifest)."""
    return [p for p in job.inputs + [n.model.path for n in job.graph.nodes] + [job.output, job.errors] if p]


def _run_job(job: BatchJob, options: PipelineOptions, test_pipeline: Optional[beam.Pipeline]):
    """Builds the pipeline, then either reports it (--dry_run: (None, {})) or runs it, writing the
    manifest either way the run ends."""
    started, started_at = time.monotonic(), manifest.utc_now()
    p = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    build_pipeline(p, job)
    if is_dry_run(options):
        report_dry_run(p, options)
        return None, {}
    inputs = manifest.input_listing(job.inputs) if job.inputs else job.bigquery.source.source
    models = manifest.model_entries(job.graph)
    metrics.PROGRESS.reset()
    all_options = options.get_all_options(drop_default=True, retain_unknown_options=True)

    def write_manifest(counters, error=None):
        if job.manifest:
            manifest.write_manifest(job.manifest, manifest.batch_manifest(
                job, all_options, inputs, models, started_at, counters, error=error))

    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:
        write_manifest({}, e)
        raise
    counters = metrics.query_counters(result)
    write_manifest(counters)
    if test_pipeline is None and is_local(options):
        print(summarize(job, counters, time.monotonic() - started))
    return result, counters


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tfx-bsl's TF1 loader deprecation notes
    try:
        run(argv)
    except (OptionsError, ModelContractError, NoInputFilesError, GraphError, SchemaError) as e:
        print(f"batch_infer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
