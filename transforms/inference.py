"""RunKeyedInference: keyed records -> keyed per-example outputs, with dead letters.

Engines are Beam ModelHandlers over (key, serialized example):
- "tfx-bsl": tfx-bsl's SavedModel handler; outputs are PredictionLogs;
- "fast": transforms.scoring.fast_engine; outputs are {name: per-example array}.
transforms.postprocess turns either into a prediction row. A batch the model fails on is re-run
in halves until each record the model rejects stands alone, so only those become dead letters
(stage infer) and the rest of the batch is still predicted. The re-runs happen inside the
handler's run_inference call (IsolateFailures), not in a second RunInference branch: merging
two branches takes a beam.Flatten, and the FnApiRunner (DirectRunner) always materializes a multi-input
Flatten, which would hold every prediction in memory until the whole input had been scored.
"""

import traceback
from typing import Dict, NamedTuple, Optional

import apache_beam as beam
from apache_beam.ml.inference import base
from apache_beam.options.pipeline_options import GoogleCloudOptions

from models.serving_model import ServingModel
from transforms.runtime import metrics
from transforms.records.dead_letters import clean_message, model_failure_dead_letter
from transforms.scoring.fast_engine import isolate_failures
from transforms.runtime.gpu import GpuSettings

ENGINES = ("fast", "tfx-bsl")
DEFAULT_ENGINE = "fast"


class RejectedRecord(NamedTuple):
    """A record the model failed on by itself, shaped like Beam's failed_inferences elements:
    failure = ([(key, serialized)], (exception type, repr, traceback lines))."""
    failure: tuple


class IsolateFailures(base.ModelHandler):
    """Delegates to a keyed handler; a batch it fails on is halved until each failing record is
    alone. The records the model rejects by themselves come back as RejectedRecords, in place.
    """

    def __init__(self, handler: base.ModelHandler):
        super().__init__()
        self._handler = handler

    def load_model(self):
        return self._handler.load_model()

    def run_inference(self, batch, model, inference_args=None):
        parts, failures = isolate_failures(
            lambda records: list(self._handler.run_inference(records, model, inference_args)), batch)
        results = [result for _, part in parts for result in part]
        for record, error in failures:
            results.append(RejectedRecord(([record], (
                type(error), repr(error), traceback.format_exception(type(error), error, error.__traceback__)))))
        return results

    def get_num_bytes(self, batch) -> int:
        return self._handler.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def batch_elements_kwargs(self):
        return self._handler.batch_elements_kwargs()

    def get_resource_hints(self) -> dict:
        return self._handler.get_resource_hints()

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()


class _SplitRejected(beam.DoFn):
    def process(self, element):
        if isinstance(element, RejectedRecord):
            yield beam.pvalue.TaggedOutput("rejected", element.failure)
        else:
            yield element


def batch_kwargs(min_batch_size: Optional[int], max_batch_size: Optional[int]) -> Dict[str, int]:
    if min_batch_size and max_batch_size and min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}")
    kwargs = {}
    if min_batch_size:
        kwargs["min_batch_size"] = min_batch_size
    if max_batch_size:
        kwargs["max_batch_size"] = max_batch_size
    return kwargs


def make_handler(engine: str, model: ServingModel, batching: Dict[str, int], project=None,
                 gpu: Optional[GpuSettings] = None):
    if engine == "tfx-bsl":
        from transforms.tfx_bsl_engine import KeyedTfxBslHandler

        return KeyedTfxBslHandler(model.path, model.signature, batching, project, gpu)
    if engine == "fast":
        from transforms.scoring.fast_engine import FastKeyedHandler

        return FastKeyedHandler(model.path, model.signature, batching, gpu)
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
                 min_batch_size: Optional[int] = None, max_batch_size: Optional[int] = None,
                 gpu: Optional[GpuSettings] = None):
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
        self._model = model
        self._gpu = gpu
        self._engine = engine
        self._batching = batch_kwargs(min_batch_size, max_batch_size)

    def expand(self, records):
        name = self._model.name
        project = records.pipeline.options.view_as(GoogleCloudOptions).project
        handler = IsolateFailures(make_handler(self._engine, self._model, self._batching, project, self._gpu))
        outputs, failed = records | f"RunInference[{name}]" >> base.RunInference(
            handler).with_exception_handling()
        split = outputs | f"SplitRejected[{name}]" >> beam.ParDo(_SplitRejected()).with_outputs(
            "rejected", main="predicted")
        failures = ((split.rejected,
                     failed.failed_inferences  # a failure outside run_inference: every record of it
                     | f"SplitFailedBatches[{name}]" >> beam.FlatMap(
                         lambda failure: [([record], failure[1]) for record in failure[0]]))
                    | f"AllFailures[{name}]" >> beam.Flatten())
        dead = failures | f"InferDeadLetters[{name}]" >> beam.Map(_infer_dead_letter, self._model)
        return split.predicted, dead
