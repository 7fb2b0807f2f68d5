"""Sinks: prediction rows as JSON Lines, PredictionLogs as TFRecord, dead letters as JSON Lines."""

import json

import apache_beam as beam
from tensorflow_serving.apis import prediction_log_pb2

OUTPUT_FORMATS = ("jsonl", "tfrecord")


def to_json_line(row) -> str:
    return json.dumps(row, separators=(",", ":"), allow_nan=False)


class WriteJsonLines(beam.PTransform):
    def __init__(self, prefix: str, num_shards: int = 0):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, rows):
        return (rows
                | "ToJson" >> beam.Map(to_json_line)
                | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl",
                                                 num_shards=self._num_shards))


class WritePredictionLogs(beam.PTransform):
    """(key, PredictionLog) -> TFRecord of PredictionLog, the format TFX's BulkInferrer writes."""

    def __init__(self, prefix: str, num_shards: int = 0):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, keyed_logs):
        return (keyed_logs
                | "DropKeys" >> beam.Values()
                | "Write" >> beam.io.WriteToTFRecord(
                    self._prefix, coder=beam.coders.ProtoCoder(prediction_log_pb2.PredictionLog),
                    file_name_suffix=".tfrecord", num_shards=self._num_shards))
