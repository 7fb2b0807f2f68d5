"""Beam transforms that run a model graph (transforms.graph.model) on chunks of keyed records.

- ScoreGraphChunks: RecordChunks -> GraphScores (+ dead letters); every model of the graph runs
  in the same DoFn on the same chunk (transforms.scoring.executor), each through its engine's batch
  call, loaded once per process.
- GraphScoresToJsonLines / GraphScoresToRows: prediction rows (transforms.records.graph_rows).
- RunModelGraph: the keyed API, (key, serialized tf.Example) -> {"rows", "dead_letters"}, for any
  source (files, tables, streams).
"""

from typing import Dict, Optional, Sequence, Tuple

import apache_beam as beam

from transforms.runtime import metrics
from transforms.scoring.chunked import DEFAULT_CHUNK_SIZE, PipelinedChunkFn
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, dead_letter
from transforms.scoring.fast_engine import shared_model, shared_signature
from transforms.runtime.gpu import GpuSettings
from transforms.graph.model import ModelGraph
from transforms.scoring.executor import GraphScore, score_graph_chunk
from transforms.records.graph_rows import rows_from_lines, rows_text
from transforms.records.chunk import RecordChunk
from transforms.score import DEAD_LETTERS, ROWS

MODEL_OUTPUTS_PREFIX = "model_outputs_"
MODEL_DEAD_LETTERS_PREFIX = "model_dead_letters_"

def shared_batch_call(engine: str, path: str, signature: str):
    """The process-wide batch call of (engine, model, signature), loaded once."""
    if engine == "fast":
        return shared_signature(path, signature)
    if engine != "tfx-bsl":
        raise ValueError(f"unknown engine {engine!r}")
    from models.tfx_bsl_call import TfxBslBatchCall

    return shared_model((engine, path, signature), lambda: TfxBslBatchCall(path, signature))


def count_model_dead_letter(row: Dict) -> None:
    """The per-model dead-letter counter of a dead letter that names its model."""
    if row.get("model"):
        metrics.counter(MODEL_DEAD_LETTERS_PREFIX + row["model"]).inc()


def count_model_outputs(score: GraphScore) -> None:
    """The per-model output counters of a scored chunk (batch) or batch of messages (stream)."""
    for name, result in score.models.items():
        metrics.counter(MODEL_OUTPUTS_PREFIX + name).inc(len(result.indices))


def passthrough_scalars(graph: ModelGraph) -> Dict[str, Optional[bool]]:
    """Per passthrough feature: scalar when a model reads it with shape [], list when with a shape,
    None (a single value becomes a scalar) when no model reads it."""
    scalars: Dict[str, Optional[bool]] = {}
    for node in graph.nodes:
        for feature in node.model.feature_spec:
            if feature.name in graph.passthrough and feature.name not in scalars:
                scalars[feature.name] = feature.stored_shape == ()
    return scalars


class ScoreGraphChunksFn(PipelinedChunkFn):
    def __init__(self, graph: ModelGraph, key_feature: Optional[str] = None, gpu: Optional[GpuSettings] = None):
        super().__init__(gpu)
        self._graph = graph
        self._key_feature = key_feature
        self._calls = None

    def _load(self):
        self._calls = {n.name: shared_batch_call(n.engine, n.model.path, n.model.signature)
                       for n in self._graph.nodes}

    def _score(self, chunk):
        score = score_graph_chunk(self._graph, self._calls, chunk, self._key_feature)
        return score, score.dead

    def _count(self, dead) -> None:
        super()._count(dead)
        for row in dead:
            count_model_dead_letter(row)


class ScoreGraphChunks(beam.PTransform):
    """RecordChunks -> (GraphScores, dead letters at stages decode, validate, convert, infer, postprocess)."""

    def __init__(self, graph: ModelGraph, key_feature: Optional[str] = None, gpu: Optional[GpuSettings] = None):
        super().__init__()
        self._graph = graph
        self._key_feature = key_feature
        self._gpu = gpu

    def expand(self, chunks):
        label = "+".join(self._graph.names)
        result = chunks | f"ScoreGraph[{label}]" >> beam.ParDo(
            ScoreGraphChunksFn(self._graph, self._key_feature, self._gpu)).with_outputs(DEAD_LETTER_TAG, main="scored")
        return result.scored, result[DEAD_LETTER_TAG]


class GraphScoreToLinesFn(beam.DoFn):
    """GraphScore -> its rows as JSON lines: one text element per chunk, or row dicts (as_rows)."""

    def __init__(self, graph: ModelGraph, row_per_model: bool = False, as_rows: bool = False):
        self._graph = graph
        self._row_per_model = row_per_model
        self._as_rows = as_rows
        self._scalars = passthrough_scalars(graph)

    def process(self, score: GraphScore):
        try:
            lines = rows_text(score.keys, score.models, score.records, self._graph.passthrough,
                              self._scalars, self._row_per_model, score.sources)
        except Exception as e:  # pylint: disable=broad-except  # each row of the chunk is accounted for
            for i in score.row_positions():
                metrics.dead_letter_counter(POSTPROCESS).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    POSTPROCESS, e, key=score.keys[i], raw=score.records[i]))
            return
        rows = len(score.row_positions()) if self._row_per_model else len(lines)
        metrics.counter(metrics.PREDICTIONS_WRITTEN).inc(rows)
        metrics.PROGRESS.add(metrics.PREDICTIONS_WRITTEN, rows)
        count_model_outputs(score)
        if self._as_rows:
            yield from rows_from_lines(lines)
        elif lines:
            yield "\n".join(lines)


def _to_chunk(batch: Sequence[Tuple[str, bytes]]) -> RecordChunk:
    return RecordChunk([key for key, _ in batch], [record for _, record in batch])


class RunModelGraph(beam.PTransform):
    """(key, serialized tf.Example) -> {"rows": prediction rows, "dead_letters": dead-letter rows}.

    Records are batched (up to max_batch_size) and every model of the graph runs on each batch.
    For each model, the records that reached the models = rows holding its outputs + dead letters
    naming it (a record that is not a tf.Example is one dead letter without a model).
    """

    def __init__(self, graph: ModelGraph, key_feature: Optional[str] = None,
                 max_batch_size: int = DEFAULT_CHUNK_SIZE, row_per_model: bool = False,
                 gpu: Optional[GpuSettings] = None):
        super().__init__()
        self._graph = graph
        self._gpu = gpu
        self._key_feature = key_feature
        self._max_batch_size = max_batch_size
        self._row_per_model = row_per_model

    def expand(self, records):
        chunks = (records
                  | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._max_batch_size)
                  | "ToChunks" >> beam.Map(_to_chunk))
        scored, unscored = chunks | "Score" >> ScoreGraphChunks(self._graph, self._key_feature, self._gpu)
        rows = scored | "ToRows" >> beam.ParDo(GraphScoreToLinesFn(
            self._graph, self._row_per_model, as_rows=True)).with_outputs(DEAD_LETTER_TAG, main="rows")
        dead = (unscored, rows[DEAD_LETTER_TAG]) | "DeadLetters" >> beam.Flatten()
        return {ROWS: rows.rows, DEAD_LETTERS: dead}
