"""python -m pipelines.to_tfrecord: JSON Lines or CSV files -> TFRecord shards of tf.Example.

    python -m pipelines.to_tfrecord --input 'data/*.csv' --output out/examples
        (--feature_spec spec.json | --model models/clf) [--image_columns image] [--gzip]

The same conversion batch_infer applies to JSON/CSV inputs (transforms.sources.instances), written as
PREFIX-SSSSS-of-NNNNN.tfrecord[.gz] as a Beam job (DirectRunner here, --runner=DataflowRunner at
scale). Every field is kept (the key field too, so a later `batch_infer --key_feature` finds it):
spec features by the spec's dtype, other fields by their values. --image_columns reads each
column's path or URI (relative paths from the input file's directory) and stores the file's bytes,
as TFRecorder does. Lines that fail become dead letters in PREFIX.errors-*.jsonl with their line.
"""

import sys

if __name__ == "__main__":  # before TensorFlow loads, so its start-up lines stay off the console
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)


import argparse
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from models.serving.feature_spec import FeatureSpecError, load_spec_file
from models.serving.model import ModelContractError, load_serving_model
from models.tf_console import VERBOSE_FLAG, VERBOSE_HELP, console_logging
from pipelines.flags import unknown_flag_problems
from pipelines.inputs import input_format_of, listed_inputs
from pipelines.options import OptionsError, field_list
from pipelines.runners import keep_main_session, pinned_runner
from transforms.runtime import metrics
from transforms.runtime.redaction import with_redacted_console
from transforms.sources.text import InstanceOptions, ReadKeyedInstances
from transforms.sinks.files import WriteJsonLines
from transforms.sources.text_formats import CSV, JSONL
from transforms.sources.files import NoInputFilesError


def converter_parser() -> argparse.ArgumentParser:
    """The converter's own flags. Not a PipelineOptions subclass: Beam parses every subclass's
    flags together, and these names (--input, --output, --model) are batch_infer's too."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.to_tfrecord", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", action="append", default=None,
                        help="JSON Lines (.jsonl/.json) or CSV (.csv) file glob; repeatable")
    parser.add_argument("--input_format", default=None, help="jsonl or csv (default: by suffix)")
    parser.add_argument("--output", help="output prefix: PREFIX-SSSSS-of-NNNNN.tfrecord[.gz]")
    parser.add_argument("--errors", help="dead-letter prefix (default: OUTPUT.errors)")
    parser.add_argument("--feature_spec", help="feature spec JSON (models/serving/feature_spec.py's format)")
    parser.add_argument("--model", help="SavedModel dir whose feature spec converts the rows")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--image_columns", default=None,
                        help="comma-separated fields holding image paths/URIs to store as bytes")
    parser.add_argument("--gzip", action="store_true", default=False, help="gzip the shards")
    parser.add_argument("--num_shards", type=int, default=0, help="0: let the runner choose")
    parser.add_argument(VERBOSE_FLAG, action="store_true", default=False, help=VERBOSE_HELP)
    return parser


def conversion_spec(opts: argparse.Namespace):
    if bool(opts.feature_spec) == bool(opts.model):
        raise OptionsError("give one of --feature_spec or --model")
    if opts.feature_spec:
        return load_spec_file(opts.feature_spec)
    return load_serving_model(opts.model, signature=opts.signature).feature_spec


def build_pipeline(p: beam.Pipeline, opts: argparse.Namespace, fmt: str) -> None:
    options = InstanceOptions(conversion_spec(opts), image_columns=field_list(opts.image_columns))
    records, dead = p | f"Read{fmt.upper()}" >> ReadKeyedInstances(opts.input, fmt, options)
    (records
     | "Examples" >> beam.FlatMap(_chunk_records)
     | "WriteTFRecord" >> beam.io.WriteToTFRecord(
         opts.output, file_name_suffix=".tfrecord.gz" if opts.gzip else ".tfrecord",
         num_shards=opts.num_shards))
    dead | "WriteDeadLetters" >> WriteJsonLines(opts.errors or f"{opts.output}.errors")


def _chunk_records(chunk):
    """A chunk's records, counted as written."""
    metrics.counter("examples_written").inc(len(chunk.records))
    return chunk.records


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = False):
    """Builds and runs the conversion; returns the counters. Raises on bad flags."""
    parser = converter_parser()
    opts, beam_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    unknown = unknown_flag_problems(beam_args, extra=[o for a in parser._actions for o in a.option_strings])
    if unknown:  # only Beam's own options may pass through
        raise OptionsError("; ".join(unknown))
    options = PipelineOptions(beam_args)
    missing = [f"--{flag} is required" for flag in ("input", "output") if not getattr(opts, flag)]
    if missing:
        raise OptionsError("; ".join(missing))
    fmt = input_format_of(opts.input, opts.input_format, listed_inputs(opts.input))
    if fmt not in (JSONL, CSV):
        raise OptionsError(f"the inputs are {fmt}; the converter reads JSON Lines or CSV")
    keep_main_session(options, save_main_session)
    p = beam.Pipeline(runner=pinned_runner(options, streaming=False), options=options)
    build_pipeline(p, opts, fmt)
    result = p.run()
    result.wait_until_finish()
    return metrics.query_counters(result)


@with_redacted_console  # secrets in paths and URLs stay off the console and the logs
def main(argv: Optional[Sequence[str]] = None) -> int:
    console_logging(sys.argv[1:] if argv is None else argv)
    try:
        counters = run(argv)
    except (OptionsError, ModelContractError, NoInputFilesError, FeatureSpecError) as e:
        print(f"to_tfrecord: error: {e}", file=sys.stderr)
        return 2
    print(f"rows read {counters.get(metrics.RECORDS_READ, 0):,}; examples written "
          f"{counters.get('examples_written', 0):,}; dead letters "
          f"{sum(v for k, v in counters.items() if k.startswith(metrics.DEAD_LETTER_PREFIX)):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
