"""BatchInferOptions: the job's own flags, parsed with Beam's PipelineOptions so runner flags pass through."""

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions

from models.tf_console import VERBOSE_FLAG, VERBOSE_HELP
from models.serving.engines import DEFAULT_ENGINE, ENGINES
from transforms.sinks.bigquery import FILE_LOADS, WRITE_METHODS
from transforms.sinks.base import SinkConfig
from transforms.sinks.registry import DEFAULT_OUTPUT_FORMAT, OUTPUT_FORMATS, sink_flag_problems
from transforms.sources.bigquery import DIRECT_READ, READ_METHODS
from transforms.sources.messages import PAYLOAD_FORMATS
from transforms.sources.text_formats import INPUT_FORMATS
from transforms.scoring.timeouts import DEFAULT_MODEL_TIMEOUT_S


class OptionsError(ValueError):
    """A flag combination the job cannot run; reported as a CLI error before the pipeline starts."""


class BatchInferOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        _add_input_args(parser)
        _add_model_args(parser)
        _add_output_args(parser)
        _add_batch_args(parser)
        parser.add_argument(VERBOSE_FLAG, action="store_true", default=False, help=VERBOSE_HELP)
        _add_bigquery_args(parser)


def _add_input_args(parser) -> None:
    parser.add_argument("--input", action="append", default=None,
                        help="file glob: TFRecord of tf.Example (gzip by .gz/.gzip), or JSON Lines "
                             "(.jsonl/.json), CSV (.csv) or Parquet (.parquet) instances; repeatable")
    parser.add_argument("--input_format", default=None,
                        help=f"one of {', '.join(INPUT_FORMATS)} (default: by file suffix)")
    parser.add_argument("--included_fields", default=None,
                        help="JSON/CSV/Parquet: comma-separated fields converted into each example (others dropped)")
    parser.add_argument("--excluded_fields", default=None,
                        help="JSON/CSV/Parquet: comma-separated fields left out of each example")
    parser.add_argument("--with_source", action="store_true", default=False,
                        help="add each record's origin to its row under 'source' "
                             "({file, record} for TFRecord, {file, line} for JSON/CSV, {file, row} for Parquet)")
    parser.add_argument("--key_feature",
                        help="feature (TFRecord) or field (JSON/CSV/Parquet, then removed from the features) "
                             "holding each record's key (default: file:index, or file:line for JSON/CSV, "
                             "file:row for Parquet)")


def _add_model_args(parser) -> None:
    parser.add_argument("--model", action="append", default=None,
                        help="[NAME=]DIR: a SavedModel version dir or a base dir (highest version); "
                             "repeat to run several models in parallel (one row per key)")
    parser.add_argument("--chain", action="store_true", default=False,
                        help="run the --model arguments in sequence, each fed by the one before")
    parser.add_argument("--graph", help="YAML model graph (models, how they connect, post-processing); "
                                        "instead of --model")
    parser.add_argument("--allow_outside_paths", action="store_true", default=False,
                        help="--graph: let the graph file name models and files outside its own "
                             "directory (a graph file is code: trust it first)")
    parser.add_argument("--allow_graph_functions", action="store_true", default=False,
                        help="--graph: let the graph file's `function:` steps import and run any "
                             "callable they name (any installed module's: a shell command too). "
                             "Without it only classify, regress and keep run. Only for a graph "
                             "file you trust like your own code")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, help=f"one of {', '.join(ENGINES)}")
    parser.add_argument("--signature", default="serving_default", help="signature to run")
    parser.add_argument("--op_library", action="append", default=None,
                        help="MODULE: a Python module imported before any model loads, here and on every "
                             "worker (a package of your own that calls tf.load_op_library); repeatable. "
                             "tensorflow-text's and YDF's ops are imported without it")
    parser.add_argument("--feature_spec", action="append", default=None,
                        help="[NAME=]FILE: a feature spec JSON replacing the one read from the model "
                             "(FILE alone: every --model); repeatable")
    parser.add_argument("--model_timeout_s", type=float, default=DEFAULT_MODEL_TIMEOUT_S,
                        help="the longest one model call (a batch) may take; past it the call is abandoned, "
                             "the model reloaded and the batch halved, so a record that always hangs becomes "
                             f"an infer dead letter (default {DEFAULT_MODEL_TIMEOUT_S:g}: room for a GPU "
                             "model's first call; 0: no limit)")


def _add_output_args(parser) -> None:
    parser.add_argument("--row_per_model", action="store_true", default=False,
                        help="one row per (key, model) instead of one row per key")
    parser.add_argument("--passthrough", default=None,
                        help="comma-separated input features copied to each row under 'inputs'")
    parser.add_argument("--output", help="output prefix; files are PREFIX-SSSSS-of-NNNNN.<ext>")
    parser.add_argument("--errors", help="dead-letter prefix (default: OUTPUT.errors)")
    parser.add_argument("--overwrite", action="store_true", default=False,
                        help="replace another run's outputs at --output (its manifest's files, every "
                             "PREFIX-SSSSS-of-NNNNN shard, the manifest); without it such a prefix is refused")
    parser.add_argument("--output_format", default=DEFAULT_OUTPUT_FORMAT,
                        help=f"one of {', '.join(OUTPUT_FORMATS)}: prediction rows as JSON Lines or "
                             "Parquet (a column per model; schema from the signatures), PredictionLogs "
                             "(TFRecord), or each input tf.Example with outputs added as features "
                             "(TFRecord, TFX BulkInferrer's examples output)")
    parser.add_argument("--output_features", default=None,
                        help="--output_format examples: OUTPUT[=FEATURE],... the outputs added to each "
                             "example and their feature names (default: every output, its own name)")
    parser.add_argument("--output_compression", default=None,
                        help="--output_format examples: gzip writes .tfrecord.gz")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="output shards (0: let the runner choose)")
    parser.add_argument("--max_dead_letter_fraction", type=float, default=0.5,
                        help="the job fails (exit 1, manifest status failed) when more than this "
                             "fraction of the records in became dead letters, or when nothing was "
                             "scored; 1 turns the check off (default 0.5)")
    parser.add_argument("--manifest", help="run manifest path (default: OUTPUT.manifest.json)")


def _add_batch_args(parser) -> None:
    parser.add_argument("--min_batch_size", type=int, default=None,
                        help="deprecated, no effect: batches are chunks of up to --max_batch_size")
    parser.add_argument("--max_batch_size", type=int, default=None,
                        help="largest batch a model sees: the records per chunk (default 1024)")
    parser.add_argument("--max_batch_bytes", type=int, default=None,
                        help="most serialized input bytes per batch (default 2 MiB; 512 KiB for models "
                             "that decode images in their signature); keeps batches of large records small")
    parser.add_argument("--redistribute", default="auto",
                        help="yes, no or auto: spread the chunks read over the workers before scoring "
                             "(a file is read on one worker). auto: where several worker processes "
                             "can score and there are fewer than 4 files per worker, or GPU workers")


def _add_bigquery_args(parser) -> None:
    parser.add_argument("--input_table", help="BigQuery table to score: PROJECT:DATASET.TABLE")
    parser.add_argument("--input_query", help="BigQuery standard SQL query whose rows are scored")
    parser.add_argument("--key_column", help="BigQuery: the column holding each row's key (required)")
    parser.add_argument("--feature_columns", default=None,
                        help="BigQuery: comma-separated columns fed to the model (default: the "
                             "features the model reads)")
    parser.add_argument("--bigquery_read_method", default=DIRECT_READ,
                        help=f"one of {', '.join(READ_METHODS)} (EXPORT stages files in --temp_location)")
    parser.add_argument("--output_table", help="BigQuery table for prediction rows, created if needed")
    parser.add_argument("--errors_table", help="BigQuery table for dead letters, created if needed")
    parser.add_argument("--bigquery_write_method", default=FILE_LOADS,
                        help=f"one of {', '.join(WRITE_METHODS)} (STORAGE_WRITE_API needs Beam's "
                             "Java expansion service)")
    parser.add_argument("--bigquery_emulator", help="local runs: a local BigQuery's REST URL "
                                                    "(make bigquery-local: http://127.0.0.1:9050)")
    parser.add_argument("--bigquery_emulator_grpc",
                        help="local runs: its Storage Read API address (127.0.0.1:9060)")
    parser.add_argument("--storage_emulator", help="local runs: a local GCS's URL for gs:// temp "
                                                   "files (http://127.0.0.1:9023)")


def check_options(opts: BatchInferOptions) -> None:
    """Raises OptionsError naming every missing or invalid flag."""
    problems = []
    sources = [flag for flag in ("input", "input_table", "input_query") if getattr(opts, flag)]
    if not sources:
        problems.append("--input (or --input_table or --input_query) is required")
    elif len(sources) > 1:
        problems.append(f"give one of --{', --'.join(sources)}")
    if not (opts.output or opts.output_table):
        problems.append("--output (or --output_table) is required")
    problems += bigquery_problems(opts)
    problems += model_flag_problems(opts)
    if not 0 <= opts.max_dead_letter_fraction <= 1:
        problems.append(f"--max_dead_letter_fraction {opts.max_dead_letter_fraction} is not between 0 and 1")
    problems += sink_flag_problems(opts.output_format, SinkConfig(
        output=opts.output, row_per_model=opts.row_per_model, output_features=opts.output_features,
        output_compression=opts.output_compression, table=opts.output_table))
    if opts.input_format is not None and opts.input_format not in INPUT_FORMATS:
        problems.append(f"--input_format {opts.input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    if opts.included_fields and opts.excluded_fields:
        problems.append("give --included_fields or --excluded_fields, not both")
    if problems:
        raise OptionsError("; ".join(problems))


def model_flag_problems(opts: BatchInferOptions) -> list:
    """The model, engine and batch flags, which batch and stream jobs share."""
    problems = []
    if opts.graph and opts.model:
        problems.append("give either --graph or --model, not both")
    elif not (opts.graph or opts.model):
        problems.append("--model (or --graph) is required")
    if opts.graph and opts.feature_spec:
        problems.append("--feature_spec applies to --model arguments (a graph file is given whole)")
    if opts.chain and (opts.graph or len(opts.model or []) < 2):
        problems.append("--chain needs two or more --model arguments (a graph file says its own wiring)")
    if opts.engine not in ENGINES:
        problems.append(f"--engine {opts.engine!r} is not one of {', '.join(ENGINES)}")
    for flag in ("min_batch_size", "max_batch_size", "max_batch_bytes"):
        value = getattr(opts, flag)
        if value is not None and value < 1:
            problems.append(f"--{flag} must be a positive integer")
    if not opts.model_timeout_s >= 0:  # NaN too
        problems.append(f"--model_timeout_s {opts.model_timeout_s:g} must be 0 (no limit) or a number of seconds")
    return problems


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
        parser.add_argument("--model_refresh_s", type=float, default=0.0,
                            help="watch each model given as a base directory (--model NAME=BASE_DIR) for a "
                                 "newer version this often and swap it in between batches after it loads and "
                                 "passes the launch checks; rows then name the versions under "
                                 "'model_versions'. 0 (default): versions stay as launched")
        parser.add_argument("--model_refresh_topic",
                            help="projects/P/topics/T whose messages name the version to serve, NAME=VERSION_DIR "
                                 "(any version: a rollback too); each worker process listens through a "
                                 "subscription of its own. Instead of --model_refresh_s")
        parser.add_argument("--progress_every_s", type=float, default=10.0,
                            help="local runs: print a progress line (messages answered, rows, dead letters, "
                                 "rate, p50/p99 latency) this often while messages come; 0: none")


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
    problems += model_flag_problems(shared)
    if stream.payload_format not in PAYLOAD_FORMATS:
        problems.append(f"--payload_format {stream.payload_format!r} is not one of {', '.join(PAYLOAD_FORMATS)}")
    if stream.max_batch_latency_ms <= 0:
        problems.append("--max_batch_latency_ms must be positive")
    if stream.model_refresh_s < 0:
        problems.append("--model_refresh_s must be 0 (no refresh) or positive")
    if stream.model_refresh_s and stream.model_refresh_topic:
        problems.append("give --model_refresh_s (look for the highest version) or --model_refresh_topic "
                        "(messages name the version), not both")
    if stream.model_refresh_topic and not re.fullmatch(r"projects/[^/]+/topics/[^/]+", stream.model_refresh_topic):
        problems.append(f"--model_refresh_topic {stream.model_refresh_topic!r} is not projects/P/topics/T")
    if stream.progress_every_s < 0:
        problems.append("--progress_every_s must be 0 (no progress lines) or positive")
    if problems:
        raise OptionsError("; ".join(problems))


def field_list(text) -> tuple:
    """'a, b,c' -> ('a', 'b', 'c')."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def bigquery_problems(opts: BatchInferOptions) -> list:
    problems = []
    from_bigquery = bool(opts.input_table or opts.input_query)
    if from_bigquery and not (opts.key_column or opts.key_feature):
        problems.append("--key_column is required with --input_table/--input_query "
                        "(keys must be stable across runs)")
    if opts.key_column and opts.key_feature and opts.key_column != opts.key_feature:
        problems.append("--key_column and --key_feature name different columns")
    if opts.feature_columns and not from_bigquery:
        problems.append("--feature_columns applies to BigQuery inputs (JSON/CSV: --included_fields)")
    if opts.bigquery_read_method.upper() not in READ_METHODS:
        problems.append(f"--bigquery_read_method {opts.bigquery_read_method!r} is not one of "
                        f"{', '.join(READ_METHODS)}")
    if opts.bigquery_write_method.upper() not in WRITE_METHODS:
        problems.append(f"--bigquery_write_method {opts.bigquery_write_method!r} is not one of "
                        f"{', '.join(WRITE_METHODS)}")
    if opts.output_table and not opts.output and not (opts.errors or opts.errors_table):
        problems.append("--output_table without --output needs --errors_table or --errors for dead letters")
    if opts.output_table and opts.output:
        problems.append("give --output or --output_table, not both")
    if opts.bigquery_emulator and from_bigquery and opts.bigquery_read_method.upper() == DIRECT_READ \
            and not opts.bigquery_emulator_grpc:
        problems.append("--bigquery_emulator with DIRECT_READ needs --bigquery_emulator_grpc "
                        "(the Storage Read API)")
    return problems


def print_options_help(prog: str, description: str, option_classes, epilog: str) -> None:
    """--help for an entry point: its PipelineOptions classes' flags ([(class, group title or None)])
    and an epilog (Beam's own flags are not listed, only named)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for options_class, title in option_classes:
        options_class._add_argparse_args(  # pylint: disable=protected-access
            parser.add_argument_group(title) if title else parser)
    parser.print_help()
    print("\n" + epilog)
