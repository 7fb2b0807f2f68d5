"""--output_format tfrecord: PredictionLogs, the TFRecord files TFX's BulkInferrer writes.

One model's results per record: the engines keep the PredictionLog they would return to
TF Serving's API (predict, classify or regress log, with the input example) as one more output
column, and this sink writes it. Several models, post-processing or passthrough write rows.
"""

from typing import Iterable, List, Tuple

import apache_beam as beam
from tensorflow_serving.apis import prediction_log_pb2

from transforms.records.chunk import PREDICTION_LOG, ScoredChunk
from transforms.sinks.base import Sink, SinkConfig, one_model_problem
from transforms.sinks.format import FormatChunkFn, format_chunks


class FormatPredictionLogsFn(FormatChunkFn):
    """ScoredChunk of a one-model job whose engine kept its logs -> (key, PredictionLog) per record."""

    def format(self, scored: ScoredChunk) -> Tuple[Iterable[Tuple[str, object]], int]:
        ((_, result),) = scored.models.items()
        logs = result.outputs[PREDICTION_LOG]
        keyed = [(scored.keys[position], logs[row]) for row, position in enumerate(result.indices)]
        return keyed, len(keyed)


@beam.ptransform_fn
def WritePredictionLogs(keyed_logs, prefix: str, num_shards: int = 0):
    """(key, PredictionLog) -> TFRecord of PredictionLog, the format TFX's BulkInferrer writes."""
    return (keyed_logs
            | "DropKeys" >> beam.Values()
            | "Write" >> beam.io.WriteToTFRecord(
                prefix, coder=beam.coders.ProtoCoder(prediction_log_pb2.PredictionLog),
                file_name_suffix=".tfrecord", num_shards=num_shards))


class PredictionLogSink(Sink):
    name = "tfrecord"
    suffix = ".tfrecord"
    keeps_logs = True
    echoes_inputs = True

    def graph_problems(self, graph, config: SinkConfig) -> List[str]:
        problem = one_model_problem(self, graph, config)
        return [problem] if problem else []

    def write(self, scored, graph, config: SinkConfig):
        logs, unformatted = format_chunks(scored, "ToPredictionLogs", FormatPredictionLogsFn())
        logs | "WritePredictionLogs" >> WritePredictionLogs(config.output, config.num_shards)
        return unformatted
