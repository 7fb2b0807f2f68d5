"""Every sink a job can write through, by name: the one place output formats are told apart.

A new sink is one module defining a transforms.sinks.base.Sink, and one entry in SINKS below.
"""

from typing import Dict, List, Optional

from transforms.sinks.base import Sink, SinkConfig
from transforms.sinks.bigquery import BigQuerySink
from transforms.sinks.examples import ExamplesSink
from transforms.sinks.jsonl import JsonLinesSink
from transforms.sinks.parquet import ParquetSink
from transforms.sinks.prediction_logs import PredictionLogSink

SINKS: Dict[str, Sink] = {sink.name: sink for sink in (
    JsonLinesSink(), ParquetSink(), PredictionLogSink(), ExamplesSink(), BigQuerySink())}
DEFAULT_OUTPUT_FORMAT = JsonLinesSink.name
OUTPUT_FORMATS = tuple(name for name, sink in SINKS.items() if sink.writes_files)  # --output_format values
# flags that only one sink reads: given with another, they would do nothing
_OWN_FLAGS = {"output_features": ExamplesSink.name, "output_compression": ExamplesSink.name}


def chosen_sink(output_format: Optional[str], table: Optional[str] = None) -> Sink:
    """The sink a job writes through: --output_table's, else --output_format's."""
    return SINKS[BigQuerySink.name] if table else SINKS[output_format or DEFAULT_OUTPUT_FORMAT]


def sink_flag_problems(output_format: Optional[str], config: SinkConfig) -> List[str]:
    """What is wrong with the output flags, before any model loads."""
    output_format = output_format or DEFAULT_OUTPUT_FORMAT
    if output_format not in OUTPUT_FORMATS:
        return [f"--output_format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}"]
    if config.table and output_format != DEFAULT_OUTPUT_FORMAT:
        return ["--output_format applies to files; --output_table writes table rows"]
    sink = chosen_sink(output_format, config.table)
    problems = [f"--{flag} applies to --output_format {owner}" for flag, owner in _OWN_FLAGS.items()
                if getattr(config, flag) and owner != sink.name]
    return problems + sink.flag_problems(config)
