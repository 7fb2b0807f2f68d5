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
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
import yaml
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions,
                                                  WorkerOptions)

from models.serving.model import ModelContractError, parse_model_arg
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
from pipelines import output_paths
from pipelines.output_paths import output_path_problems
from pipelines.runners import LocalRunner, is_local, keep_main_session, local_runner, pinned_runner, runner_name
from transforms.graph.model import GraphError
from transforms.runtime import metrics
from transforms.runtime.accounting import (DUPLICATE_KEYS, MODEL_DEAD_LETTERS_PREFIX, MODEL_OUTPUTS_PREFIX,
                                          MODELS_LOADED, SCORING_PROCESSES, UNREADABLE_BYTES, UNREADABLE_REGIONS,
                                          counter_table)
from transforms.runtime.duplicate_keys import CountDuplicateKeys
from transforms.runtime.redaction import with_redacted_console
from transforms.scoring.beam import ScoreChunks
from transforms.scoring.engines import batch_calls
from transforms.sinks.base import WriteToSink
from transforms.sinks.bigquery_schema import SchemaError
from transforms.sinks.errors import WriteDeadLetters
from transforms.sources.files import NoInputFilesError, is_remote


def build_pipeline(p: beam.Pipeline, job: BatchJob) -> None:
    """read chunks -> score every model on each chunk -> the job's sink (transforms.sinks.registry);
    the dead letters of every stage -> the dead-letter sink. The one path of every batch job."""
    chunks, unreadable = read_chunks(p, job)
    sink = job.sink
    scored, unscored = chunks | "Score" >> ScoreChunks(
        job.graph, job.scoring_key_feature, job.gpu, keep_logs=sink.keeps_logs, model_timeout_s=job.model_timeout_s,
        op_libraries=job.op_libraries)
    unwritten = scored | f"Write[{sink.name}]" >> WriteToSink(sink, job.graph, job.sink_config)
    if job.key_feature:  # keys from the data may repeat; position keys cannot
        scored | "CountDuplicateKeys" >> CountDuplicateKeys()  # pylint: disable=expression-not-assigned
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
              distributions: Optional[dict] = None, written: Optional[dict] = None) -> str:
    """The end-of-run summary (written: the files the run wrote, output_paths.written_outputs)."""
    written = written or {}
    read = counters.get(metrics.RECORDS_READ, 0)
    predicted = counters.get(metrics.PREDICTIONS_WRITTEN, 0)
    dead = sum(v for k, v in counters.items() if k.startswith(metrics.DEAD_LETTER_PREFIX))
    models = ["models:"] + [f"  {line}" for line in job.graph.describe().splitlines()] + [
        f"  {name}: outputs {counters.get(MODEL_OUTPUTS_PREFIX + name, 0):,}, "
        f"dead letters {counters.get(MODEL_DEAD_LETTERS_PREFIX + name, 0):,}"
        + inference_note(manifest.inference_metrics(distributions or {}, name)) for name in job.graph.names]
    return "\n".join(models + [
        f"predictions:  {written.get('predictions') or job.predictions_at}",
        f"dead letters: {job.bigquery.errors_table or written.get('dead_letters') or f'{job.errors}-*.jsonl'}",
        f"manifest:     {job.manifest or 'none (give --manifest PATH)'}",
        f"records in {read + counters.get(metrics.DEAD_LETTER_PREFIX + 'read', 0):,}; "
        f"predictions out {predicted:,}; dead letters {dead:,}" + unreadable_note(counters)
        + (f"; duplicate keys {counters.get(DUPLICATE_KEYS, 0):,}" if job.key_feature else ""),
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
        argv = argv + demo.demo_args() + ["--overwrite"]  # each demo run replaces the last one's outputs
    return PipelineOptions(argv)


def launch_problem(job: BatchJob, options: PipelineOptions) -> Optional[str]:
    """What the launcher can see would go wrong: sampled records none of which would be scored,
    outputs that cannot be written, prefixes whose writing would delete other files, a prefix
    holding another run's outputs without --overwrite (not checked in a dry run, which writes
    nothing)."""
    problem = job_sample_problem(job)
    if problem or is_dry_run(options):
        return problem
    problems = output_path_problems([job.output, job.errors, job.manifest])
    try:
        problems += prefix_problems(job, options.view_as(BatchInferOptions).overwrite)
    except OSError as e:  # Beam's BeamIOError: a remote prefix that cannot be listed (no access)
        problems.append(f"cannot list {job.output or job.errors} to check for other outputs there: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return "; ".join(p for p in problems if p) or None


def prefix_problems(job: BatchJob, overwrite: bool) -> List[Optional[str]]:
    """Prefixes whose writing would delete other files, and (without --overwrite) a prefix that
    holds another run's outputs."""
    output, errors = file_prefixes(job)
    problems: List[Optional[str]] = output_paths.overlapping_prefix_problems(
        [(output, file_suffix(job)), (errors, ".jsonl")])
    if not overwrite:
        problems.append(output_paths.earlier_outputs_problem(
            output or errors, output_paths.existing_outputs(output, errors, job.manifest)))
    return problems


def file_prefixes(job: BatchJob) -> Tuple[Optional[str], Optional[str]]:
    """The prefixes of the job's prediction and dead-letter files (None: a table instead)."""
    return job.output, (None if job.bigquery.errors_table else job.errors)


def file_suffix(job: BatchJob) -> str:
    """The suffix of the job's prediction files (.jsonl, .parquet, .tfrecord.gz, ...)."""
    location = job.sink.location(job.sink_config)
    return location[len(f"{job.output}-*"):] if job.output and location.startswith(f"{job.output}-*") else ""


def clear_outputs(job: BatchJob, overwrite: bool) -> None:
    """Before anything is written, with --overwrite: the earlier run's files at the prefixes (said
    on stderr)."""
    output, errors = file_prefixes(job)
    if overwrite:
        removed = output_paths.remove_earlier_outputs(output, errors, job.manifest if output else None)
        if removed:
            print(f"--overwrite: removed {len(removed):,} file(s) of an earlier run at {output}", file=sys.stderr)


def remove_leftover_temp_dirs(job: BatchJob) -> None:
    """The temporary directories that killed or failed runs left at the job's prefixes (said on
    stderr); a prefix that cannot be listed is left to the launch checks to report."""
    try:
        left = output_paths.remove_temp_dirs(file_prefixes(job))
    except OSError:  # Beam's BeamIOError: no access to a remote prefix; launch_problem says so
        return
    if left:
        print(f"removed {len(left):,} temporary director{'ies' if len(left) != 1 else 'y'} that an "
              f"earlier run left: {', '.join(left)}", file=sys.stderr)


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
    if is_dry_run(options) and (problem := remote_model_problem(opts)):
        raise OptionsError(problem)
    redirected = activate_emulators(opts, cloud.project, runner)
    try:
        job = job_from_options(opts, cloud, gpu_settings(options), bool(options.view_as(DataflowJobOptions).gpu),
                               offline=is_dry_run(options), workers=scoring_workers(options, runner))
        for warning in prepare_runner_options(options, worker_paths(job), [n.model.path for n in job.graph.nodes],
                                              job.op_libraries):
            print(f"warning: {warning}", file=sys.stderr)
        if not is_dry_run(options):  # first: what a killed run left may be what fills the disk
            remove_leftover_temp_dirs(job)
        problem = launch_problem(job, options)
        if problem:
            raise OptionsError(problem)
        return _run_job(job, options, test_pipeline, runner)
    finally:
        if redirected:
            from pipelines.local import bigquery_emulator

            bigquery_emulator.restore()


def model_paths(opts: BatchInferOptions) -> List[Tuple[str, str]]:
    """(name, path) of each model the flags name: --model arguments, or a graph file's models
    (a graph file that cannot be read names none here; its loader says why)."""
    if not opts.graph:
        return [parse_model_arg(arg) for arg in opts.model or []]
    try:
        with open(opts.graph) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):  # the graph loader reports it in its own words
        return []
    models = config.get("models") if isinstance(config, dict) else None
    return [(str(m.get("name")), str(m["path"])) for m in (models if isinstance(models, list) else [])
            if isinstance(m, dict) and m.get("path")]


def remote_model_problem(opts: BatchInferOptions) -> Optional[str]:
    """Why an offline --dry_run cannot check these models: it reads every SavedModel at launch,
    and one on gs:// (or another remote store) is out of reach. None when all are local."""
    remote = [f"{name}={path}" for name, path in model_paths(opts) if is_remote(path)]
    if not remote:
        return None
    return (f"{', '.join(remote)}: an offline --dry_run reads each model at launch and cannot reach "
            "a remote one; give a local copy of it (gsutil cp -r ...), as --model NAME=LOCAL_DIR")


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

    def written(self) -> dict:
        """The files the run wrote at its prefixes (output_paths.written_outputs)."""
        output, errors = file_prefixes(self.job)
        return output_paths.written_outputs(output, file_suffix(self.job), errors)

    def write(self, counters, error=None, processes=None, distributions=None, written=None) -> None:
        """Raises ManifestWriteError when the run cannot be put on record."""
        if not self.job.manifest:
            return
        run_info = {"runner": self.ran_on, "redistribute": self.job.redistribute, "scoring_processes": processes,
                    "models_loaded": counters.get(MODELS_LOADED)}
        manifest.write_manifest(self.job.manifest, manifest.batch_manifest(
            self.job, self.options, self.inputs, self.models, self.started_at, counters, run_info, error=error,
            distributions=distributions, written=self.written() if written is None else written))

    def failed(self, error: BaseException) -> None:
        """The job raised: its temporary directories removed, on record with its error, which
        stays the one raised."""
        try:
            output_paths.remove_temp_dirs(file_prefixes(self.job))
            self.write({}, error)
        except (manifest.ManifestWriteError, OSError) as unwritten:  # Beam's BeamIOError is an OSError
            error.add_note(str(unwritten))


def run_to_the_end(p: beam.Pipeline, record: "RunRecord"):
    """Runs the pipeline and waits for it; a failure is put on record (record.failed) and raised."""
    metrics.PROGRESS.reset()
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:  # whatever failed the run: put on record, then raised as it was
        record.failed(e)
        raise
    return result


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
    clear_outputs(job, options.view_as(BatchInferOptions).overwrite)
    result = run_to_the_end(p, record)
    counters = metrics.query_counters(result)
    distributions = metrics.query_distributions(result)
    processes = len(metrics.query_string_sets(result).get(SCORING_PROCESSES, ()))
    written = record.written()
    if test_pipeline is None and is_local(options):
        print(summarize(job, counters, time.monotonic() - record.started, record.ran_on, processes, distributions,
                        written))
    problem = error_budget_problem(counters, job.max_dead_letter_fraction)
    failed = ErrorBudgetExceeded(problem) if problem else None
    record.write(counters, failed, processes=processes, distributions=distributions,
                 written=written)  # ManifestWriteError: not on record
    if failed:
        raise failed
    return result, counters


@with_redacted_console  # secrets in paths and URLs stay off the console and the logs
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
