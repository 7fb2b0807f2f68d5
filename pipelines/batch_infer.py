"""python -m pipelines.batch_infer: score TFRecord files of tf.Example with SavedModels.

    python -m pipelines.batch_infer --input 'data/*.tfrecord.gz' --model models/clf
        --output out/predictions [--key_feature id] [--errors out/errors] [--runner ...]
    ... --model five=models/five --model ten=models/ten [--chain]   # parallel, or in sequence
    ... --graph graph.yaml                                            # any wiring, post-processing
    ... --input 'data/*.jsonl' (or .csv) --key_feature id             # instances, converted by the spec

A run with --output writes OUTPUT.manifest.json (inputs, model hashes, options, counts, versions);
any run, BigQuery to BigQuery included, writes one with --manifest PATH.

With no arguments it runs the embedded demo (pipelines/local/demo.py) locally.
"""

import sys

if __name__ == "__main__":  # before TensorFlow loads, so its start-up lines stay off the console
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)


import time
from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions,
                                                  WorkerOptions)

from models.serving.model import ModelContractError
from models.tf_console import console_logging
from pipelines import manifest
from pipelines.bigquery_io import activate_emulators
from pipelines.dataflow import is_dry_run, normalize_dry_run_argv, prepare_runner_options, report_dry_run
from pipelines.flags import foreign_flags, unknown_flag_problems
from pipelines.gpu_options import DataflowJobOptions, gpu_settings
from pipelines.inputs import read_chunks
from pipelines.job import BatchJob, job_from_options
from pipelines.options import BatchInferOptions, OptionsError, StreamInferOptions, print_options_help
from pipelines.input_sample import job_sample_problem
from pipelines.output_paths import output_path_problems
from pipelines.runners import LocalRunner, is_local, keep_main_session, local_runner, pinned_runner, runner_name
from transforms.graph.model import GraphError
from transforms.runtime import metrics
from transforms.runtime.accounting import (MODEL_DEAD_LETTERS_PREFIX, MODEL_OUTPUTS_PREFIX, MODELS_LOADED,
                                          SCORING_PROCESSES, UNREADABLE_BYTES, UNREADABLE_REGIONS, counter_table)
from transforms.scoring.beam import ScoreChunks
from transforms.scoring.engines import batch_calls
from transforms.sinks.base import WriteToSink
from transforms.sinks.bigquery_schema import SchemaError
from transforms.sinks.errors import WriteDeadLetters
from transforms.sources.files import NoInputFilesError


def build_pipeline(p: beam.Pipeline, job: BatchJob) -> None:
    """read chunks -> score every model on each chunk -> the job's sink (transforms.sinks.registry);
    the dead letters of every stage -> the dead-letter sink. The one path of every batch job."""
    chunks, unreadable = read_chunks(p, job)
    sink = job.sink
    scored, unscored = chunks | "Score" >> ScoreChunks(
        job.graph, job.scoring_key_feature, job.gpu, keep_logs=sink.keeps_logs)
    unwritten = scored | f"Write[{sink.name}]" >> WriteToSink(sink, job.graph, job.sink_config)
    settings = job.bigquery
    ((unreadable, unscored, unwritten)  # not flattened: each stage's are written as they come
     | "WriteDeadLetters" >> WriteDeadLetters(job.errors, settings.errors_table, settings.write_method,
                                              settings.project, settings.temp_location))


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


def inference_note(found: dict) -> str:
    """'; 11 batches of 455 on average, 3.1 ms each (max 9.0 ms); loaded in 0.41 s; 66,580 bytes'."""
    parts = []
    if "batches" in found:
        latency = found.get("batch_latency_ms", {})
        parts.append(f"{found['batches']:,} batches of {found['batch_size_mean']:,.0f} on average"
                     + (f", {latency['mean']:,.1f} ms each (max {latency['max']:,.1f} ms)" if latency else ""))
    if "load_seconds_max" in found:
        parts.append(f"loaded in {found['load_seconds_max']:.2f} s")
    if "bytes_on_disk" in found:
        parts.append(f"{found['bytes_on_disk']:,} bytes")
    return "".join(f"; {p}" for p in parts)


def summarize(job: BatchJob, counters: dict, seconds: float, runner: str = "", processes: int = 0,
              distributions: Optional[dict] = None) -> str:
    read = counters.get(metrics.RECORDS_READ, 0)
    written = counters.get(metrics.PREDICTIONS_WRITTEN, 0)
    dead = sum(v for k, v in counters.items() if k.startswith(metrics.DEAD_LETTER_PREFIX))
    models = ["models:"] + [f"  {line}" for line in job.graph.describe().splitlines()] + [
        f"  {name}: outputs {counters.get(MODEL_OUTPUTS_PREFIX + name, 0):,}, "
        f"dead letters {counters.get(MODEL_DEAD_LETTERS_PREFIX + name, 0):,}"
        + inference_note(manifest.inference_metrics(distributions or {}, name)) for name in job.graph.names]
    return "\n".join(models + [
        f"predictions:  {job.predictions_at}",
        f"dead letters: {job.bigquery.errors_table or f'{job.errors}-*.jsonl'}",
        f"manifest:     {job.manifest or 'none (give --manifest PATH)'}",
        f"records in {read + counters.get(metrics.DEAD_LETTER_PREFIX + 'read', 0):,}; "
        f"predictions out {written:,}; dead letters {dead:,}" + unreadable_note(counters),
        f"wall time {seconds:.1f} s; {read / max(seconds, 1e-9):,.0f} records/s end to end",
        f"runner {runner or 'unknown'}; scored in {processes} worker process{'es' if processes != 1 else ''}"
        f"{'; chunks redistributed' if job.redistribute else ''}",
        "counters:",
        counter_table(counters),
    ])


class ErrorBudgetExceeded(RuntimeError):
    """The job ran but scored nothing, or turned too many records into dead letters."""


def error_budget_problem(counters: dict, max_fraction: float) -> Optional[str]:
    """Why a finished job counts as failed, or None: nothing scored (no records read, or every
    record a dead letter), or more than max_fraction of the records in became dead letters (a
    misspelt --key_feature does that). max_fraction 1 turns the check off."""
    if max_fraction >= 1:
        return None
    records_in = counters.get(metrics.RECORDS_READ, 0) + counters.get(metrics.DEAD_LETTER_PREFIX + "read", 0)
    dead = sum(v for k, v in counters.items() if k.startswith(metrics.DEAD_LETTER_PREFIX))
    if not records_in:
        return "no records were read from the inputs"
    if not counters.get(metrics.PREDICTIONS_WRITTEN, 0):
        return f"nothing was scored: all {records_in:,} records in became dead letters ({dead:,})"
    if dead > max_fraction * records_in:
        return (f"{dead:,} of {records_in:,} records in ({dead / records_in:.0%}) became dead letters, over "
                f"--max_dead_letter_fraction {max_fraction:g}; see the dead letters for why")
    return None


def unreadable_note(counters: dict) -> str:
    """' (of which N unreadable file regions, M bytes skipped)' when files had corrupt regions."""
    regions = counters.get(UNREADABLE_REGIONS, 0)
    if not regions:
        return ""
    skipped = counters.get(UNREADABLE_BYTES, 0)
    return (f" (of which {regions:,} unreadable file region{'s' if regions != 1 else ''}"
            f"{f', {skipped:,} bytes skipped' if skipped else ''})")


def print_help() -> None:
    print_options_help("python -m pipelines.batch_infer", __doc__,
                       [(BatchInferOptions, None), (DataflowJobOptions, "Dataflow")],
                       "Standard Beam options (--runner, --project, --region, --temp_location, --sdk_container_image, ...)\n"
                       "pass through. With --runner DataflowRunner, --dry_run builds the job without submitting it.")


def stream_flag_problem(argv: Sequence[str]) -> Optional[str]:
    """Why stream_infer flags given to batch_infer are refused, or None."""
    stream_flags = foreign_flags(argv, StreamInferOptions)
    if not stream_flags:
        return None
    return (f"{', '.join(stream_flags)}: stream_infer flag(s), not batch_infer's"
            + ("; a batch job scores with the model versions it launched with (its manifest "
               "names them)" if "--model_refresh_s" in stream_flags else ""))


def parsed_options(argv: List[str], demo_when_bare: bool) -> PipelineOptions:
    """The job's options; a command without inputs, models or outputs runs the embedded demo
    (when demo_when_bare). Raises OptionsError on misspelt or stream-only flags."""
    unknown = unknown_flag_problems(argv)
    if unknown:  # before anything else: a misspelt --model is not a missing one, nor the demo
        raise OptionsError("; ".join(unknown))
    problem = stream_flag_problem(argv)
    if problem:
        raise OptionsError(problem)
    opts = PipelineOptions(argv).view_as(BatchInferOptions)
    if demo_when_bare and not (opts.input or opts.input_table or opts.input_query or opts.model
                               or opts.output or opts.output_table):
        from pipelines.local import demo

        print(f"No --input/--model/--output given: running the embedded demo\n  {' '.join(demo.demo_args())}")
        argv = argv + demo.demo_args()
    return PipelineOptions(argv)


def launch_problem(job: BatchJob, options: PipelineOptions) -> Optional[str]:
    """What the launcher can see would go wrong: sampled records none of which would be scored,
    outputs that cannot be written (not checked in a dry run, which writes nothing)."""
    problem = job_sample_problem(job)
    if problem or is_dry_run(options):
        return problem
    problems = output_path_problems([job.output, job.errors, job.manifest])
    return "; ".join(problems) if problems else None


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = False,
        test_pipeline: Optional[beam.Pipeline] = None):
    """Builds and runs the job; returns (PipelineResult, counters). Raises OptionsError and the
    like on bad flags or models, and ErrorBudgetExceeded when the job scored (almost) nothing."""
    argv = normalize_dry_run_argv(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return None, {}
    options = parsed_options(list(argv), demo_when_bare=test_pipeline is None)
    opts = options.view_as(BatchInferOptions)
    keep_main_session(options, save_main_session)
    warn_about_unsafe_runner_modes(options)
    cloud = options.view_as(GoogleCloudOptions)
    runner = local_runner(options, streaming=False)
    redirected = activate_emulators(opts, cloud.project, runner)
    try:
        job = job_from_options(opts, cloud, gpu_settings(options), bool(options.view_as(DataflowJobOptions).gpu),
                               offline=is_dry_run(options), workers=scoring_workers(options, runner))
        for warning in prepare_runner_options(options, worker_paths(job)):
            print(f"warning: {warning}", file=sys.stderr)
        problem = launch_problem(job, options)
        if problem:
            raise OptionsError(problem)
        return _run_job(job, options, test_pipeline, runner)
    finally:
        if redirected:
            from pipelines.local import bigquery_emulator

            bigquery_emulator.restore()


def scoring_workers(options: PipelineOptions, runner: Optional[LocalRunner]) -> Optional[int]:
    """How many worker processes can score, as far as the launcher knows (None: not known; a
    remote fleet counts its machines, each of which may run several processes)."""
    if runner is not None:
        return runner.workers if runner.mode != "in_memory" else 1
    workers = options.view_as(WorkerOptions)
    return workers.max_num_workers or workers.num_workers or None


def worker_paths(job: BatchJob) -> List[str]:
    """The files workers read or write: inputs, models, outputs (not the launcher's manifest)."""
    return [p for p in job.inputs + [n.model.path for n in job.graph.nodes] + [job.output, job.errors] if p]


class RunRecord:
    """Writes the job's manifest (when it has one) however the run ends."""

    def __init__(self, job: BatchJob, options: PipelineOptions, ran_on: str):
        self.job, self.ran_on = job, ran_on
        self.started, self.started_at = time.monotonic(), manifest.utc_now()
        self.inputs = manifest.input_listing(job.inputs) if job.inputs else job.bigquery.source.source
        self.models = manifest.model_entries(job.graph)
        self.options = options.get_all_options(drop_default=True, retain_unknown_options=True)

    def write(self, counters, error=None, processes=None, distributions=None) -> None:
        """Raises ManifestWriteError when the run cannot be put on record."""
        if not self.job.manifest:
            return
        run_info = {"runner": self.ran_on, "redistribute": self.job.redistribute, "scoring_processes": processes,
                    "models_loaded": counters.get(MODELS_LOADED)}
        manifest.write_manifest(self.job.manifest, manifest.batch_manifest(
            self.job, self.options, self.inputs, self.models, self.started_at, counters, run_info, error=error,
            distributions=distributions))

    def failed(self, error: BaseException) -> None:
        """The job raised: on record with its error, which stays the one raised."""
        try:
            self.write({}, error)
        except manifest.ManifestWriteError as unwritten:
            error.add_note(str(unwritten))


def _run_job(job: BatchJob, options: PipelineOptions, test_pipeline: Optional[beam.Pipeline],
             runner: Optional[LocalRunner] = None):
    """Builds the pipeline, then either reports it (--dry_run: (None, {})) or runs it, writing the
    manifest either way the run ends."""
    p = test_pipeline if test_pipeline is not None else beam.Pipeline(
        runner=pinned_runner(options, streaming=False), options=options)
    build_pipeline(p, job)
    if is_dry_run(options):
        report_dry_run(p, options)
        return None, {}
    if is_local(options):  # a model its engine cannot load fails here, not in a worker; loaded once
        batch_calls(job.graph, job.sink.keeps_logs)
    record = RunRecord(job, options, runner.describe() if runner is not None else runner_name(options))
    metrics.PROGRESS.reset()
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:
        record.failed(e)
        raise
    counters = metrics.query_counters(result)
    distributions = metrics.query_distributions(result)
    processes = len(metrics.query_string_sets(result).get(SCORING_PROCESSES, ()))
    if test_pipeline is None and is_local(options):
        print(summarize(job, counters, time.monotonic() - record.started, record.ran_on, processes, distributions))
    problem = error_budget_problem(counters, job.max_dead_letter_fraction)
    failed = ErrorBudgetExceeded(problem) if problem else None
    record.write(counters, failed, processes=processes, distributions=distributions)  # ManifestWriteError: not on record
    if failed:
        raise failed
    return result, counters


def main(argv: Optional[Sequence[str]] = None) -> int:
    console_logging(sys.argv[1:] if argv is None else argv)
    try:
        run(argv)
    except (OptionsError, ModelContractError, NoInputFilesError, GraphError, SchemaError) as e:
        print(f"batch_infer: error: {e}", file=sys.stderr)
        return 2
    except manifest.ManifestWriteError as e:
        print(f"batch_infer: error: the job ran, but {e}", file=sys.stderr)
        return 1
    except ErrorBudgetExceeded as e:
        print(f"batch_infer: error: the job failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
