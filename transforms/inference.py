"""RunKeyedInference: keyed records -> keyed per-example outputs, with dead letters.

Engines are Beam ModelHandlers over (key, serialized example):
- "tfx-bsl": tfx-bsl's SavedModel handler; outputs are PredictionLogs;
- "fast": transforms.fast_engine; outputs are {name: per-example array}.
transforms.postprocess turns either into a prediction row. A batch the model fails on is re-run
one record at a time, so only the records the model itself rejects become dead letters (stage
infer) and the rest of the batch is still predicted.
"""

from typing import Dict, Optional

import apache_beam as beam
from apache_beam.ml.inference import base
from apache_beam.options.pipeline_options import GoogleCloudOptions

from models.serving_model import ServingModel
from transforms import metrics
from transforms.dead_letters import clean_message, model_failure_dead_letter

ENGINES = ("fast", "tfx-bsl")
DEFAULT_ENGINE = "fast"
SINGLE_RECORD = {"min_batch_size": 1, "max_batch_size": 1}


def batch_kwargs(min_batch_size: Optional[int], max_batch_size: Optional[int]) -> Dict[str, int]:
    if min_batch_size and max_batch_size and min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}")
    kwargs = {}
    if min_batch_size:
        kwargs["min_batch_size"] = min_batch_size
    if max_batch_size:
        kwargs["max_batch_size"] = max_batch_size
    return kwargs


def make_handler(engine: str, model: ServingModel, batching: Dict[str, int], project=None):
    if engine == "tfx-bsl":
        from transforms.tfx_bsl_engine import KeyedTfxBslHandler

        return KeyedTfxBslHandler(model.path, model.signature, batching, project)
    if engine == "fast":
        from transforms.fast_engine import FastKeyedHandler

        return FastKeyedHandler(model.path, model.signature, batching)
    raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")


def failed_record(failure):
    """Beam's (batch of one, (exception type, repr, traceback lines)) -> (key, bytes, type, message).

    TensorFlow errors have an empty repr; their message is in the traceback's last entry.
    """
    (key, serialized), = failure[0]
    exc_type, exc_repr, traceback_lines = failure[1]
    message = traceback_lines[-1].strip() if traceback_lines else exc_repr
    for prefix in (f"{exc_type.__module__}.{exc_type.__name__}: ", f"{exc_type.__name__}: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return key, serialized, exc_type.__name__, clean_message(message)


def _infer_dead_letter(failure, model: ServingModel):
    key, serialized, error_type, message = failed_record(failure)
    row = model_failure_dead_letter(message, key, serialized, model.feature_spec, model.name, error_type)
    metrics.dead_letter_counter(row["stage"]).inc()
    return row


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
        project = records.pipeline.options.view_as(GoogleCloudOptions).project
        handler = make_handler(self._engine, self._model, self._batching, project)
        single = make_handler(self._engine, self._model, SINGLE_RECORD, project)
        outputs, failed = records | f"RunInference[{name}]" >> base.RunInference(
            handler).with_exception_handling()
        retried, failed_singles = (
            failed.failed_inferences
            | f"SplitFailedBatches[{name}]" >> beam.FlatMap(lambda failure: failure[0])
            | f"RetryOneByOne[{name}]" >> base.RunInference(single).with_exception_handling())
        dead = failed_singles.failed_inferences | f"InferDeadLetters[{name}]" >> beam.Map(
            _infer_dead_letter, self._model)
        merged = (outputs, retried) | f"MergeRetried[{name}]" >> beam.Flatten()
        return merged, dead
