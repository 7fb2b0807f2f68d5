"""python -m pipelines.stream_infer: score a Pub/Sub stream with SavedModels, continuously.

    python -m pipelines.stream_infer --input_subscription projects/P/subscriptions/S \\
        --model clf=models/clf --output_topic projects/P/topics/predictions \\
        --errors_topic projects/P/topics/prediction-errors \\
        [--payload_format example|json] [--key_attribute id] [--max_batch_size 256] \\
        [--max_batch_latency_ms 100] [--output_table P:D.T] [--graph graph.yaml] [--runner ...]

Each message is one instance; the results are messages on --output_topic (the prediction row as
JSON, the key as the `key` attribute) and/or rows in --output_table; every message that cannot be
scored becomes one message on --errors_topic (its payload and attributes unchanged, plus
error_stage, error_type, error) and/or a row in --errors_table. Streaming mode is set here.
Locally (DirectRunner), --pubsub_emulator HOST:PORT points the Pub/Sub clients at an emulator, and
--bigquery_emulator/--storage_emulator the BigQuery and GCS clients (as in batch_infer). Local
streams are at least once across any stop: a message is acknowledged once its answer is published,
and Ctrl-C or SIGTERM drain the messages in hand before exiting (pipelines/local/pubsub_acks.py).
"""

import sys

if __name__ == "__main__":  # before TensorFlow loads, so its start-up lines stay off the console
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)


import base64
import dataclasses
import os
import signal
import textwrap
import threading
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from models.serving.model import ModelContractError
from models.tf_console import console_logging
from pipelines.bigquery_io import activate_emulators
from pipelines.dataflow import is_dry_run, normalize_dry_run_argv, prepare_runner_options, report_dry_run
from pipelines.flags import foreign_flags, unknown_flag_problems
from pipelines.gpu_options import DataflowJobOptions, gpu_settings
from pipelines.job import StreamJob, stream_job_from_options
from pipelines.options import BatchInferOptions, OptionsError, StreamInferOptions, print_options_help
from pipelines.runners import keep_main_session, local_runner, pinned_runner, runner_name
from transforms.graph.model import GraphError, record_spec
from transforms.runtime import metrics
from transforms.runtime.redaction import with_redacted_console
from transforms.runtime.accounting import counter_table
from transforms.scoring.engines import batch_calls
from transforms.scoring.stream import ScoreMessages
from transforms.sinks.bigquery import WritePredictionRows, WriteRowsToBigQuery
from transforms.sinks.bigquery_schema import DEAD_LETTER_SCHEMA, SchemaError
from transforms.sinks.messages import dead_letter_message, prediction_message
from transforms.sources.pubsub import DeadLetter


def _refused_row_as_stream_dead_letter(row) -> DeadLetter:
    """A dead letter of a prediction row BigQuery refused; its payload is the row as JSON."""
    return DeadLetter(row, base64.b64decode(row["input_base64"]), {}, row.get("key") or "")


def _as_pubsub_message(pair) -> PubsubMessage:
    data, attributes = pair
    return PubsubMessage(data, attributes)


def _publish(job: StreamJob, topic: str, dead_letters: bool = False) -> beam.PTransform:
    """Beam's Pub/Sub sink; locally, our publish-then-acknowledge (pipelines.local.pubsub_acks)."""
    if not job.ack_when_answered:
        return beam.io.WriteToPubSub(topic, with_attributes=True)
    from pipelines.local.pubsub_acks import PublishThenAckFn

    return beam.ParDo(PublishThenAckFn(topic, dead_letters))


def _ack_answered(dead_letters: bool = False) -> beam.DoFn:
    from pipelines.local.pubsub_acks import AckAnsweredFn

    return AckAnsweredFn(dead_letters)


def build_pipeline(p: beam.Pipeline, job: StreamJob) -> None:
    """Pub/Sub -> records -> latency-bounded batches -> the scoring core -> topics and/or tables."""
    if job.input_subscription:
        read = beam.io.ReadFromPubSub(subscription=job.input_subscription, with_attributes=True)
    else:
        read = beam.io.ReadFromPubSub(topic=job.input_topic, with_attributes=True)
    rows, dead = (p
                  | "ReadFromPubSub" >> read
                  | "Score" >> ScoreMessages(
                      job.graph, record_spec(job.graph), job.payload_format, job.key_attribute,
                      job.max_payload_bytes, job.max_batch_size, job.max_batch_latency_s, job.with_source,
                      gpu=job.gpu, refresh=job.refresh, model_timeout_s=job.model_timeout_s,
                      op_libraries=job.op_libraries))
    if job.output_topic:
        (rows
         | "ToPredictionMessages" >> beam.Map(lambda pred: _as_pubsub_message(prediction_message(*pred)))
         | "WritePredictions" >> _publish(job, job.output_topic))
    elif job.ack_when_answered:
        rows | "AckPredictions" >> beam.ParDo(_ack_answered())
    if job.output_table:
        refused = (rows
                   | "PredictionRows" >> beam.Map(lambda pred: pred.row)
                   | "WritePredictionsToBigQuery" >> WritePredictionRows(
                       job.graph, job.output_table, job.bigquery_write_method, job.project,
                       with_source=job.with_source, with_versions=job.refresh.on))
        refused_letters = refused | "RefusedRows" >> beam.Map(_refused_row_as_stream_dead_letter)
        dead = (dead, refused_letters) | "WithRefusedRows" >> beam.Flatten()
    if job.errors_topic:
        (dead
         | "ToDeadLetterMessages" >> beam.Map(lambda d: _as_pubsub_message(
             dead_letter_message(d.row, d.payload, d.attributes, d.message_id)))
         | "WriteDeadLetters" >> _publish(job, job.errors_topic, dead_letters=True))
    elif job.ack_when_answered:
        dead | "AckDeadLetters" >> beam.ParDo(_ack_answered(dead_letters=True))
    if job.errors_table:
        (dead
         | "DeadLetterRows" >> beam.Map(lambda d: d.row)
         | "WriteDeadLettersToBigQuery" >> WriteRowsToBigQuery(
             job.errors_table, DEAD_LETTER_SCHEMA, job.bigquery_write_method, job.project))


# batch_infer's flags a stream reads too (print_help lists them); any other would do nothing
SHARED_WITH_BATCH = ("--model", "--graph", "--chain", "--allow_outside_paths", "--allow_graph_functions",
                     "--engine", "--signature", "--op_library", "--feature_spec", "--model_timeout_s",
                     "--passthrough", "--with_source", "--max_batch_size", "--output_table",
                     "--errors_table", "--bigquery_write_method", "--bigquery_emulator",
                     "--bigquery_emulator_grpc", "--storage_emulator", "--verbose")


def batch_flag_problem(argv: Sequence[str]) -> Optional[str]:
    """Why batch_infer flags a stream would ignore (--output_format, --key_feature, ...) are refused."""
    ignored = [f for f in foreign_flags(argv, BatchInferOptions) if f not in SHARED_WITH_BATCH]
    if not ignored:
        return None
    return (f"{', '.join(ignored)} are batch_infer flags; a stream reads Pub/Sub (--key_attribute names "
            "the key) and writes --output_topic / --output_table rows and --errors_topic / --errors_table")


def stream_options(argv: Sequence[str]) -> PipelineOptions:
    """The stream's options, in streaming mode. Raises OptionsError on misspelt flags and on
    batch_infer flags the stream would ignore."""
    problems = unknown_flag_problems(argv) or [p for p in [batch_flag_problem(argv)] if p]
    if problems:
        raise OptionsError("; ".join(problems))
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    return options


def prepared_job(options: PipelineOptions, local: bool, runner) -> StreamJob:
    """The job, its flags checked and models loaded before any client is redirected; then, for
    local runs, the Pub/Sub emulator, prompt pulls and acknowledgements once answered
    (at-least-once), and the local BigQuery/GCS, redirected while the stream runs."""
    stream, shared = options.view_as(StreamInferOptions), options.view_as(BatchInferOptions)
    if stream.pubsub_emulator and not local:
        raise OptionsError("--pubsub_emulator is for local runs: remote workers cannot reach it")
    project = options.view_as(GoogleCloudOptions).project
    job = stream_job_from_options(stream, shared, project, gpu_settings(options),
                                  bool(options.view_as(DataflowJobOptions).gpu))
    if stream.pubsub_emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = stream.pubsub_emulator
    if local:  # at-least-once: a message is acknowledged once its row or dead letter is published
        from pipelines.local import pubsub_acks, pubsub_prompt_pulls

        pubsub_prompt_pulls.use_prompt_pulls(defer_acks=True)
        pubsub_acks.IN_FLIGHT.reset()
        job = dataclasses.replace(job, ack_when_answered=True)
    activate_emulators(shared, project, runner)
    models = [n.model.path for n in job.graph.nodes]
    for warning in prepare_runner_options(options, models, models, job.op_libraries):
        print(f"warning: {warning}", file=sys.stderr)
    return job


def start_console(every_s: float) -> threading.Event:
    """Local runs where run() waits: a progress line every every_s (0: none) until the returned
    event is set (the stream's own line says more than the batch progress line)."""
    from pipelines.local import pubsub_acks, stream_progress

    stopped = threading.Event()
    stream_progress.PROGRESS.reset()
    metrics.PROGRESS.enabled = False
    if every_s > 0:
        stream_progress.print_progress_until(stopped, pubsub_acks.IN_FLIGHT.count,
                                             lambda line: print(line, file=sys.stderr, flush=True), every_s)
    return stopped


def wait_for(result, local: bool, console: Optional[threading.Event]) -> None:
    """Blocks until the stream ends; Ctrl-C or SIGTERM stop it cleanly (stop()). Then closes the
    local readers and prints the console's totals."""
    previous = stop_on_sigterm()
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a clean stop
        stop(result, local)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if local:
            from pipelines.local import pubsub_prompt_pulls

            pubsub_prompt_pulls.close_readers()
        if console is not None:
            from pipelines.local import stream_progress

            console.set()
            metrics.PROGRESS.enabled = True
            print(stream_progress.PROGRESS.totals(), file=sys.stderr, flush=True)


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = False, wait: bool = True,
        test_pipeline: Optional[beam.Pipeline] = None):
    """Builds and starts the stream; with wait, blocks until it ends (Ctrl-C cancels it).
    Returns the PipelineResult (None for a --dry_run). Raises OptionsError on bad flags.
    test_pipeline: build into this pipeline (a TestPipeline with TestStream input, say)."""
    options = stream_options(normalize_dry_run_argv(sys.argv[1:] if argv is None else argv))
    keep_main_session(options, save_main_session)
    runner = local_runner(options, streaming=True)
    local = runner is not None
    job = prepared_job(options, local, runner)
    p = test_pipeline if test_pipeline is not None else beam.Pipeline(
        runner=pinned_runner(options, streaming=True), options=options)
    build_pipeline(p, job)
    if is_dry_run(options):
        report_dry_run(p, options)
        return None
    if local:  # a model its engine cannot load fails here, not in a worker; loaded once
        batch_calls(job.graph)
    if test_pipeline is None:
        print(f"stream_infer: reading {job.input_subscription or job.input_topic} on the "
              f"{runner.describe() if runner else runner_name(options)}", file=sys.stderr)
    console = None
    if local and test_pipeline is None and wait:
        console = start_console(options.view_as(StreamInferOptions).progress_every_s)
    result = p.run()
    if wait:
        wait_for(result, local, console)
    return result


def stop_on_sigterm():
    """SIGTERM (a service manager's stop) stops the stream as Ctrl-C does: cleanly. Returns the
    handler it replaced (None off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def stop(result, local: bool) -> None:
    """Stops a running stream. Locally it drains first: nothing new is pulled, the messages in
    hand are answered and acknowledged, the rest handed back for redelivery (pubsub_acks.drain)."""
    if not local:
        result.cancel()
        return
    from pipelines.local import pubsub_acks

    print("stream_infer: stopping: answering the messages in hand...", file=sys.stderr)
    answered, handed_back = pubsub_acks.drain(result)
    print(f"stream_infer: stopped; {answered} in-flight message(s) answered while stopping, "
          f"{handed_back} handed back for redelivery", file=sys.stderr)


def print_help() -> None:
    print_options_help("python -m pipelines.stream_infer", __doc__,
                       [(StreamInferOptions, None), (DataflowJobOptions, "Dataflow")],
                       textwrap.fill("From batch_infer: " + ", ".join(SHARED_WITH_BATCH) + ".", 100) +
                       "\nStandard Beam options pass through; with --runner DataflowRunner, --dry_run builds the "
                       "job without submitting it.")


@with_redacted_console  # secrets in paths and URLs stay off the console and the logs
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    console_logging(argv)
    started = time.monotonic()
    try:
        result = run(argv)
    except (OptionsError, ModelContractError, GraphError, SchemaError) as e:
        print(f"stream_infer: error: {e}", file=sys.stderr)
        return 2
    if result is None:  # a dry run
        return 0
    if local_runner(PipelineOptions(argv), streaming=True) is not None:
        return 0  # run printed the totals; a cancelled local job's Beam counters lag behind them
    counters = metrics.query_counters(result)
    print(f"stream ended after {time.monotonic() - started:.0f} s\n" + counter_table(counters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
