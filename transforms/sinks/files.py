"""File sinks: prediction rows and dead letters as JSON Lines, PredictionLogs as TFRecord."""

import apache_beam as beam
from tensorflow_serving.apis import prediction_log_pb2

from transforms.records.rows import to_json_line

OUTPUT_FORMATS = ("jsonl", "parquet", "tfrecord", "examples")  # rows (2), PredictionLogs, inputs + outputs


@beam.ptransform_fn
def WriteJsonLines(rows, prefix: str, num_shards: int = 0, preformatted: bool = False):
    """Rows (dicts) -> PREFIX-SSSSS-of-NNNNN.jsonl. With preformatted, elements are already JSON
    Lines text (one or many lines each, as FormatRows writes a chunk's rows)."""
    if not preformatted:
        rows = rows | "ToJson" >> beam.Map(to_json_line)
    return rows | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", num_shards=num_shards)


@beam.ptransform_fn
def WritePredictionLogs(keyed_logs, prefix: str, num_shards: int = 0):
    """(key, PredictionLog) -> TFRecord of PredictionLog, the format TFX's BulkInferrer writes."""
    return (keyed_logs
            | "DropKeys" >> beam.Values()
            | "Write" >> beam.io.WriteToTFRecord(
                prefix, coder=beam.coders.ProtoCoder(prediction_log_pb2.PredictionLog),
                file_name_suffix=".tfrecord", num_shards=num_shards))
