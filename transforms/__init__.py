"""Reusable Beam transforms for scoring TensorFlow SavedModels: read, score, write.

    from transforms import ReadKeyedTFRecords, ScoreChunks, FormatRows, WriteJsonLines, parallel_graph

Every transform that can reject a record returns WithDeadLetters(main, dead_letters); a rejected
record becomes exactly one dead-letter row (transforms.records.dead_letters), never a crash or a
silent drop. The names below load on first use, so importing one subpackage stays light.
"""

import importlib

_EXPORTS = {
    # sources: -> WithDeadLetters(RecordChunks, dead letters)
    "ReadKeyedTFRecords": "transforms.sources.tfrecord",
    "ReadKeyedInstances": "transforms.sources.text",
    "InstanceOptions": "transforms.sources.text",
    "ReadKeyedBigQueryRows": "transforms.sources.bigquery",
    "BigQueryInput": "transforms.sources.bigquery",
    # models and their wiring
    "ModelGraph": "transforms.graph.model",
    "parallel_graph": "transforms.graph.model",
    "chain_graph": "transforms.graph.model",
    "load_graph_file": "transforms.graph.file",
    # scoring: the one executor, in Beam
    "ScoreChunks": "transforms.scoring.beam",
    "FormatRows": "transforms.sinks.format",
    "ScoreRecords": "transforms.scoring.beam",
    "ScoreMessages": "transforms.scoring.stream",
    "ChunkModelHandler": "transforms.scoring.model_handler",
    "ToPredictionRows": "transforms.scoring.tfx_bsl_logs",
    # sinks
    "WriteJsonLines": "transforms.sinks.files",
    "WritePredictionLogs": "transforms.sinks.prediction_logs",
    "WritePredictionRows": "transforms.sinks.bigquery",
    # the data contract
    "RecordChunk": "transforms.records.chunk",
    "ScoredChunk": "transforms.records.chunk",
    "WithDeadLetters": "transforms.records.dead_letters",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'transforms' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
