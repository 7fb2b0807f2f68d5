"""The tfx-bsl engine: tfx-bsl's own SavedModel handler under Beam's RunInference.

tfx-bsl's public RunInference expands to exactly base.RunInference(_ModelHandlerWrapper(handler)).
We build that same pair so that (1) batch sizes take effect (tfx-bsl's wrapper does not forward
batch_elements_kwargs, DESIGN.md fact 3) and (2) Beam's exception handling catches a failing
batch, which is then re-run one record at a time so that only the bad record is a dead letter.
"""

from typing import Any, Dict, Mapping, Optional

import apache_beam as beam
from apache_beam.ml.inference import base
from tfx_bsl.beam import run_inference as tfx_run_inference
from tfx_bsl.public.proto import model_spec_pb2


def inference_spec(model_path: str, signature: str) -> model_spec_pb2.InferenceSpecType:
    return model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=model_path, signature_name=[signature]))


def batch_kwargs(min_batch_size: Optional[int], max_batch_size: Optional[int]) -> Dict[str, int]:
    kwargs = {}
    if min_batch_size:
        kwargs["min_batch_size"] = min_batch_size
    if max_batch_size:
        kwargs["max_batch_size"] = max_batch_size
    if min_batch_size and max_batch_size and min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}")
    return kwargs


class KeyedTfxBslHandler(tfx_run_inference._ModelHandlerWrapper):  # pylint: disable=protected-access
    """tfx-bsl's keyed handler wrapper, with our batch sizes and the model shared per process."""

    def __init__(self, spec: model_spec_pb2.InferenceSpecType, batching: Mapping[str, int],
                 project: Optional[str] = None):
        super().__init__(tfx_run_inference.create_model_handler(spec, None, project))
        self._batching = dict(batching)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching


def failed_record(failure):
    """Beam's (batch of one, (exception type, repr, traceback lines)) -> (key, bytes, type, message).

    TensorFlow errors have an empty repr; their message is in the traceback's last entry.
    """
    (key, serialized), = failure[0]
    exc_type, exc_repr, traceback_lines = failure[1]
    message = traceback_lines[-1].strip() if traceback_lines else exc_repr
    prefix = f"{exc_type.__module__}.{exc_type.__name__}: "
    if message.startswith(prefix):
        message = message[len(prefix):]
    return key, serialized, exc_type.__name__, " ".join(message.split())


def run_tfx_bsl_inference(records, model_path: str, signature: str, batching: Mapping[str, int],
                          label: str):
    """(key, bytes) -> ((key, PredictionLog), failed records as (key, bytes, error type, message))."""
    project = records.pipeline.options.view_as(beam.options.pipeline_options.GoogleCloudOptions).project
    spec = inference_spec(model_path, signature)
    predictions, failed = (
        records
        | f"RunInference[{label}]" >> base.RunInference(
            KeyedTfxBslHandler(spec, batching, project)).with_exception_handling())
    singles = failed.failed_inferences | f"SplitFailedBatches[{label}]" >> beam.FlatMap(
        lambda failure: failure[0])
    retried, failed_singles = (
        singles
        | f"RetryOneByOne[{label}]" >> base.RunInference(
            KeyedTfxBslHandler(spec, {"min_batch_size": 1, "max_batch_size": 1}, project)
        ).with_exception_handling())
    errors = failed_singles.failed_inferences | f"FailedRecords[{label}]" >> beam.Map(failed_record)
    merged = (predictions, retried) | f"MergeRetried[{label}]" >> beam.Flatten()
    return merged, errors
