"""The chunked path of the fast engine: a RecordChunk, not a record, is the pipeline element.

Read TFRecord shards in chunks -> score each chunk with one signature call -> write each chunk's
rows as one text element. Keys stay aligned with outputs inside the chunk; every record that
cannot be scored leaves as a dead letter (transforms.records.chunk.score_chunk).
"""

import concurrent.futures
from typing import Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from models.serving_model import ServingModel
from transforms.runtime import metrics
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, dead_letter
from transforms.scoring.fast_engine import shared_signature
from transforms.runtime.gpu import GpuSettings
from transforms.records.json_lines import scored_chunk_text
from transforms.sinks.prediction_logs import predict_log
from transforms.records.chunk import score_chunk

DEFAULT_CHUNK_SIZE = 1024
# Input bytes per chunk. Heavy models with large inputs run faster on CPU in smaller batches (a
# 64x64x3 CNN: 916 ex/s at 32 images, 656 at 1024); small records still fill 1024-record chunks.
DEFAULT_CHUNK_BYTES = 512 * 1024


def count_dead_letters(rows) -> None:
    for row in rows:
        metrics.dead_letter_counter(row["stage"]).inc()


class PipelinedChunkFn(beam.DoFn):
    """Scores chunk n on a helper thread while chunk n-1's results go downstream.

    Formatting and writing are fused into this stage and run on the bundle's thread; TensorFlow
    releases the GIL, so the model and the Python around it overlap. At most two chunks are in
    flight. Subclasses load their models in _load and return (result or None, dead letters) from
    _score. `gpu` is applied before the models load (memory growth or limit; GPU required or not).
    """

    def __init__(self, gpu: Optional[GpuSettings] = None):
        self._gpu = gpu or GpuSettings()
        self._executor = None
        self._pending = None

    def _load(self) -> None:
        raise NotImplementedError

    def _score(self, chunk):
        raise NotImplementedError

    def setup(self):
        self._gpu.apply()
        self._load()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="score-chunks")

    def start_bundle(self):
        self._pending = None

    def process(self, chunk, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        previous = self._pending
        self._pending = (self._executor.submit(self._score, chunk), timestamp, window)
        if previous is not None:
            yield from self._results(*previous)

    def finish_bundle(self):
        if self._pending is not None:
            previous, self._pending = self._pending, None
            yield from self._results(*previous)

    def _count(self, dead) -> None:  # on the bundle's thread: Beam's metrics are thread-local
        count_dead_letters(dead)

    def _results(self, future, timestamp, window):
        scored, dead = future.result()
        self._count(dead)
        for row in dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, WindowedValue(row, timestamp, [window]))
        if scored is not None:
            yield WindowedValue(scored, timestamp, [window])

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class ScoreChunksFn(PipelinedChunkFn):
    """RecordChunk -> ScoredChunk (+ dead letters); the model is loaded once per process."""

    def __init__(self, model: ServingModel, key_feature: Optional[str] = None, gpu: Optional[GpuSettings] = None):
        super().__init__(gpu)
        self._model = model
        self._key_feature = key_feature
        self._call = None

    def _load(self):
        self._call = shared_signature(self._model.path, self._model.signature)

    def _score(self, chunk):
        return score_chunk(self._call, chunk, self._model.feature_spec, self._model.name,
                           self._key_feature)


class ChunkToJsonLinesFn(beam.DoFn):
    """ScoredChunk -> one text element holding all its JSON lines (WriteToText adds the last \\n)."""

    def __init__(self, model_name: str):
        self._model_name = model_name

    def process(self, scored):
        try:
            text = scored_chunk_text(self._model_name, scored.keys, scored.outputs)
        except Exception as e:  # pylint: disable=broad-except  # each row of the chunk is accounted for
            for key in scored.keys:
                metrics.dead_letter_counter(POSTPROCESS).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    POSTPROCESS, e, key=key, model=self._model_name))
            return
        metrics.counter(metrics.PREDICTIONS_WRITTEN).inc(len(scored.keys))
        metrics.PROGRESS.add(metrics.PREDICTIONS_WRITTEN, len(scored.keys))
        yield text


class ChunkToPredictionLogsFn(beam.DoFn):
    """ScoredChunk -> (key, PredictionLog) per record, as the tfx-bsl engine emits them."""

    def __init__(self, signature: str):
        self._signature = signature

    def process(self, scored):
        names = list(scored.outputs)
        for i, (key, record) in enumerate(zip(scored.keys, scored.records)):
            metrics.counter(metrics.PREDICTIONS_WRITTEN).inc()
            yield key, predict_log(record, {n: scored.outputs[n][i] for n in names}, self._signature)


class ScoreChunks(beam.PTransform):
    """RecordChunks -> (ScoredChunks, dead letters at stages decode, validate, infer)."""

    def __init__(self, model: ServingModel, key_feature: Optional[str] = None, gpu: Optional[GpuSettings] = None):
        super().__init__()
        self._model = model
        self._key_feature = key_feature
        self._gpu = gpu

    def expand(self, chunks):
        result = chunks | f"ScoreChunks[{self._model.name}]" >> beam.ParDo(
            ScoreChunksFn(self._model, self._key_feature, self._gpu)).with_outputs(DEAD_LETTER_TAG, main="scored")
        return result.scored, result[DEAD_LETTER_TAG]
