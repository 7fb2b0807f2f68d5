"""RunKeyedInference: keyed records -> keyed per-example outputs, with dead letters.

Engines plug in here by name. Every engine yields (key, outputs) where outputs is a
PredictionLog (tfx-bsl) or a {name: ndarray} mapping; transforms.rows turns either into a row.
"""

from typing import Optional

import apache_beam as beam

from models.serving_model import ServingModel
from transforms import metrics
from transforms.dead_letters import INFER, dead_letter
from transforms.tfx_bsl_engine import batch_kwargs, run_tfx_bsl_inference

ENGINES = ("tfx-bsl",)
DEFAULT_ENGINE = "tfx-bsl"


def _infer_dead_letter(failure, model_name: str):
    key, serialized, error_type, message = failure
    metrics.dead_letter_counter(INFER).inc()
    return dead_letter(INFER, message, key=key, raw=serialized, model=model_name,
                       error_type=error_type)


class RunKeyedInference(beam.PTransform):
    """(key, serialized tf.Example) -> ((key, outputs), dead letters at stage infer)."""

    def __init__(self, model: ServingModel, engine: str = DEFAULT_ENGINE,
                 min_batch_size: Optional[int] = None, max_batch_size: Optional[int] = None):
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
        self._model = model
        self._engine = engine
        self._batching = batch_kwargs(min_batch_size, max_batch_size)

    def expand(self, records):
        name = self._model.name
        outputs, failures = run_tfx_bsl_inference(
            records, self._model.path, self._model.signature, self._batching, name)
        dead = failures | f"InferDeadLetters[{name}]" >> beam.Map(_infer_dead_letter, name)
        return outputs, dead
