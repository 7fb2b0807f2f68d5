"""ScoreKeyedExamples: the reusable core every source feeds: validate -> infer -> prediction rows."""

from typing import Optional

import apache_beam as beam

from models.serving_model import ServingModel
from transforms.runtime.gpu import GpuSettings
from transforms.inference import DEFAULT_ENGINE, RunKeyedInference
from transforms.postprocess import ToPredictionRows
from transforms.validate import ValidateRecords

ROWS, OUTPUTS, DEAD_LETTERS = "rows", "outputs", "dead_letters"


class ScoreKeyedExamples(beam.PTransform):
    """(key, serialized tf.Example) -> {"rows", "outputs", "dead_letters"} PCollections.

    rows are prediction rows; outputs the engine's keyed outputs (PredictionLogs for tfx-bsl, for
    TFX consumers); dead_letters every record rejected on the way (decode, validate, infer,
    postprocess). Each input ends as exactly one row or one dead letter.
    """

    def __init__(self, model: ServingModel, engine: str = DEFAULT_ENGINE,
                 key_feature: Optional[str] = None, min_batch_size: Optional[int] = None,
                 max_batch_size: Optional[int] = None, gpu: Optional[GpuSettings] = None):
        super().__init__()
        self._model = model
        self._gpu = gpu
        self._engine = engine
        self._key_feature = key_feature
        self._batching = (min_batch_size, max_batch_size)

    def expand(self, records):
        name = self._model.name
        valid, invalid = records | f"Validate[{name}]" >> ValidateRecords(
            self._model.feature_spec, self._key_feature)
        outputs, failed = valid | f"Infer[{name}]" >> RunKeyedInference(
            self._model, self._engine, *self._batching, gpu=self._gpu)
        rows, unconvertible = outputs | f"ToRows[{name}]" >> ToPredictionRows(name)
        dead = (invalid, failed, unconvertible) | f"DeadLetters[{name}]" >> beam.Flatten()
        return {ROWS: rows, OUTPUTS: outputs, DEAD_LETTERS: dead}
