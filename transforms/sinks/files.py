"""Sinks: prediction rows as JSON Lines, PredictionLogs as TFRecord, dead letters as JSON Lines."""

import apache_beam as beam
from tensorflow_serving.apis import prediction_log_pb2

from transforms.records.json_lines import to_json_line

OUTPUT_FORMATS = ("jsonl", "tfrecord")


class WriteJsonLines(beam.PTransform):
    """Rows (dicts) -> PREFIX-SSSSS-of-NNNNN.jsonl. With preformatted, elements are already JSON
    Lines text (one or many lines each, as the chunked path writes them)."""

    def __init__(self, prefix: str, num_shards: int = 0, preformatted: bool = False):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards
        self._preformatted = preformatted

    def expand(self, rows):
        if not self._preformatted:
            rows = rows | "ToJson" >> beam.Map(to_json_line)
        return rows | "Write" >> beam.io.WriteToText(
            self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)


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
