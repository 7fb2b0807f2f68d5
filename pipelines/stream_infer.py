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
--bigquery_emulator/--storage_emulator the BigQuery and GCS clients (as in batch_infer).
"""

import base64
import logging
import os
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                  StandardOptions)

from models.serving_model import ModelContractError
from pipelines.batch_infer import graph_from_options
from pipelines.bigquery_io import activate_emulators
from pipelines.dataflow import is_dry_run, normalize_dry_run_argv, prepare_runner_options, report_dry_run
from pipelines.gpu_options import DataflowJobOptions, gpu_settings
from pipelines.options import BatchInferOptions, OptionsError, print_options_help
from pipelines.runners import is_local
from transforms.runtime import metrics
from pipelines.local import pubsub_prompt_pulls as pubsub_local
from transforms.sinks.bigquery_schema import DEAD_LETTER_SCHEMA, SchemaError, prediction_schema
from transforms.sinks.bigquery import STORAGE_WRITE_API, STREAMING_INSERTS, WriteRowsToBigQuery, refused_row_dead_letter
from transforms.runtime.gpu import GPU_BATCH, GpuSettings
from transforms.graph.model import GraphError, record_spec
from transforms.sources.pubsub import PAYLOAD_FORMATS, dead_letter_message, prediction_message
from transforms.scoring.stream import DEAD_LETTERS, ROWS, DeadLetter, ScoreMessages

DEFAULT_STREAM_BATCH_SIZE = 256
DEFAULT_MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # Pub/Sub's own message limit


class StreamInferOptions(PipelineOptions):
    """The stream's own flags; models, engines, batch sizes and BigQuery tables are batch_infer's
    flags (BatchInferOptions), shared because Beam parses every options class together."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input_subscription", help="projects/P/subscriptions/S to read")
        parser.add_argument("--input_topic", help="projects/P/topics/T to read through a new subscription")
        parser.add_argument("--output_topic", help="projects/P/topics/T for prediction messages")
        parser.add_argument("--errors_topic", help="projects/P/topics/T for dead-letter messages")
        parser.add_argument("--payload_format", default="example",
                            help=f"one of {', '.join(PAYLOAD_FORMATS)}: serialized tf.Example, or a JSON "
                                 "object of features converted by the model's feature spec")
        parser.add_argument("--key_attribute", help="message attribute holding the key (default: message id)")
        parser.add_argument("--max_batch_latency_ms", type=float, default=100.0,
                            help="longest a message waits for its batch to fill (default 100)")
        parser.add_argument("--max_payload_bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES,
                            help="larger payloads become dead letters (default 10 MiB)")
        parser.add_argument("--pubsub_emulator", help="local runs: HOST:PORT of a Pub/Sub emulator")


def check_stream_options(stream: StreamInferOptions, shared: BatchInferOptions) -> None:
    problems = []
    if bool(stream.input_subscription) == bool(stream.input_topic):
        problems.append("give one of --input_subscription or --input_topic")
    if not (stream.output_topic or shared.output_table):
        problems.append("--output_topic (or --output_table) is required")
    if not (stream.errors_topic or shared.errors_table):
        problems.append("--errors_topic (or --errors_table) is required: dead letters need a place")
    if graph_flags := [f for f in ("input", "input_table", "input_query", "output") if getattr(shared, f)]:
        problems.append(f"--{', --'.join(graph_flags)} are batch_infer flags; a stream reads Pub/Sub")
    if not (shared.model or shared.graph):
        problems.append("--model (or --graph) is required")
    if stream.payload_format not in PAYLOAD_FORMATS:
        problems.append(f"--payload_format {stream.payload_format!r} is not one of {', '.join(PAYLOAD_FORMATS)}")
    if stream.max_batch_latency_ms <= 0:
        problems.append("--max_batch_latency_ms must be positive")
    if shared.max_batch_size is not None and shared.max_batch_size < 1:
        problems.append("--max_batch_size must be a positive integer")
    if problems:
        raise OptionsError("; ".join(problems))


def _refused_row_dead_letter(failed) -> DeadLetter:
    """A prediction row BigQuery refused, as a dead letter whose payload is the row as JSON."""
    row = refused_row_dead_letter(failed)
    return DeadLetter(row, base64.b64decode(row["input_base64"]), {}, row.get("key") or "")


def _as_pubsub_message(pair) -> PubsubMessage:
    data, attributes = pair
    return PubsubMessage(data, attributes)


def build_pipeline(p: beam.Pipeline, stream: StreamInferOptions, shared: BatchInferOptions, graph,
                   project: Optional[str], gpu: GpuSettings = GpuSettings(),
                   default_batch_size: int = DEFAULT_STREAM_BATCH_SIZE) -> None:
    if stream.input_subscription:
        read = beam.io.ReadFromPubSub(subscription=stream.input_subscription, with_attributes=True)
    else:
        read = beam.io.ReadFromPubSub(topic=stream.input_topic, with_attributes=True)
    scored = (p
              | "ReadFromPubSub" >> read
              | "Score" >> ScoreMessages(
                  graph, record_spec(graph), stream.payload_format, stream.key_attribute,
                  stream.max_payload_bytes, shared.max_batch_size or default_batch_size,
                  stream.max_batch_latency_ms / 1000.0, shared.with_source, gpu=gpu))
    rows, dead = scored[ROWS], scored[DEAD_LETTERS]
    write_method = STORAGE_WRITE_API if shared.bigquery_write_method.upper() == STORAGE_WRITE_API \
        else STREAMING_INSERTS  # load jobs need a triggering frequency; a stream inserts rows
    if stream.output_topic:
        (rows
         | "ToPredictionMessages" >> beam.Map(lambda pred: _as_pubsub_message(prediction_message(*pred)))
         | "WritePredictions" >> beam.io.WriteToPubSub(stream.output_topic, with_attributes=True))
    if shared.output_table:
        spec = {f.name: (f.dtype, f.size) for f in record_spec(graph)}
        refused = (rows
                   | "PredictionRows" >> beam.Map(lambda pred: pred.row)
                   | "WritePredictionsToBigQuery" >> WriteRowsToBigQuery(
                       shared.output_table, prediction_schema(graph, spec, shared.with_source),
                       write_method, project))
        refused_letters = refused | "RefusedRows" >> beam.Map(_refused_row_dead_letter)
        dead = (dead, refused_letters) | "WithRefusedRows" >> beam.Flatten()
    if stream.errors_topic:
        (dead
         | "ToDeadLetterMessages" >> beam.Map(lambda d: _as_pubsub_message(
             dead_letter_message(d.row, d.payload, d.attributes, d.message_id)))
         | "WriteDeadLetters" >> beam.io.WriteToPubSub(stream.errors_topic, with_attributes=True))
    if shared.errors_table:
        (dead
         | "DeadLetterRows" >> beam.Map(lambda d: d.row)
         | "WriteDeadLettersToBigQuery" >> WriteRowsToBigQuery(
             shared.errors_table, DEAD_LETTER_SCHEMA, write_method, project))


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = True, wait: bool = True):
    """Builds and starts the stream; with wait, blocks until it ends (Ctrl-C cancels it).
    Returns the PipelineResult (None for a --dry_run). Raises OptionsError on bad flags."""
    argv = normalize_dry_run_argv(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(argv)
    stream, shared = options.view_as(StreamInferOptions), options.view_as(BatchInferOptions)
    check_stream_options(stream, shared)
    options.view_as(StandardOptions).streaming = True
    options.view_as(SetupOptions).save_main_session = save_main_session
    local = is_local(options)
    if stream.pubsub_emulator:
        if not local:
            raise OptionsError("--pubsub_emulator is for local runs: remote workers cannot reach it")
        os.environ["PUBSUB_EMULATOR_HOST"] = stream.pubsub_emulator
    if local:
        pubsub_local.use_prompt_pulls()
    # local BigQuery/GCS for --output_table/--errors_table: stays redirected while the stream runs
    activate_emulators(shared, options.view_as(GoogleCloudOptions).project, local)
    graph = graph_from_options(shared)
    for warning in prepare_runner_options(options, [n.model.path for n in graph.nodes]):
        print(f"warning: {warning}", file=sys.stderr)
    on_gpus = bool(options.view_as(DataflowJobOptions).gpu)
    p = beam.Pipeline(options=options)
    build_pipeline(p, stream, shared, graph, options.view_as(GoogleCloudOptions).project, gpu_settings(options),
                   GPU_BATCH.stream_max_batch_size if on_gpus else DEFAULT_STREAM_BATCH_SIZE)
    if is_dry_run(options):
        report_dry_run(p, options)
        return None
    result = p.run()
    if wait:
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            result.cancel()
        finally:
            if local:
                pubsub_local.close_readers()
    return result


def print_help() -> None:
    print_options_help("python -m pipelines.stream_infer", __doc__,
                       [(StreamInferOptions, None), (DataflowJobOptions, "Dataflow")],
                       "From batch_infer: --model/--graph/--chain, --engine, --signature, --passthrough, --with_source,\n"
                       "--max_batch_size, --output_table/--errors_table. Standard Beam options pass through; with\n"
                       "--runner DataflowRunner, --dry_run builds the job without submitting it.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    logging.getLogger().setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        result = run(argv)
    except (OptionsError, ModelContractError, GraphError, SchemaError) as e:
        print(f"stream_infer: error: {e}", file=sys.stderr)
        return 2
    if result is None:  # a dry run
        return 0
    counters = metrics.query_counters(result)
    print(f"stream ended after {time.monotonic() - started:.0f} s\n" + metrics.format_counters(counters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
