"""Prediction rows from engine outputs (ToPredictionRows) and post-processing of rows (PostprocessRows).

A record that fails here is a dead letter (stage postprocess); the others go on.
"""

import apache_beam as beam
from tensorflow_serving.apis import prediction_log_pb2

from models.prediction_log import outputs_from_log
from transforms.runtime import metrics
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, dead_letter
from transforms.graph.postprocessors import apply_steps, as_batch_of_one, first_of_batch
from transforms.records.rows import KEY_FIELD, outputs_to_json, prediction_row


def engine_outputs(value):
    """A PredictionLog (tfx-bsl engine) or a {name: array} mapping -> {name: array}."""
    if isinstance(value, prediction_log_pb2.PredictionLog):
        return outputs_from_log(value)
    return value


class ToRowFn(beam.DoFn):
    def __init__(self, model_name: str):
        self._model_name = model_name

    def process(self, element):
        key, value = element
        try:
            row = prediction_row(key, {self._model_name: outputs_to_json(engine_outputs(value))})
        except Exception as e:  # any conversion failure is this record's, not the job's
            metrics.dead_letter_counter(POSTPROCESS).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                POSTPROCESS, e, key=key, model=self._model_name))
            return
        metrics.counter(metrics.PREDICTIONS_WRITTEN).inc()
        metrics.PROGRESS.add(metrics.PREDICTIONS_WRITTEN)
        yield row


class ToPredictionRows(beam.PTransform):
    """(key, outputs) of one model -> ({"key": k, model_name: {...}} rows, dead letters)."""

    def __init__(self, model_name: str):
        super().__init__()
        self._model_name = model_name

    def expand(self, keyed_outputs):
        result = keyed_outputs | beam.ParDo(ToRowFn(self._model_name)).with_outputs(
            DEAD_LETTER_TAG, main="rows")
        return result.rows, result[DEAD_LETTER_TAG]


class PostprocessRowsFn(beam.DoFn):
    """Applies post-processing steps (transforms.graph.postprocessors) to one model's outputs in a row.

    Usable on its own on any prediction rows: the row's outputs for `model_name` become a batch
    of one, go through the steps and are written back. A row the steps fail on is a dead letter
    (stage postprocess); other rows go on.
    """

    def __init__(self, model_name: str, steps):
        self._model_name = model_name
        self._steps = tuple(steps)

    def process(self, row):
        try:
            outputs = apply_steps(self._steps, as_batch_of_one(row[self._model_name]))
            result = {**row, self._model_name: outputs_to_json(first_of_batch(outputs), keep=list(outputs))}
        except Exception as e:  # pylint: disable=broad-except  # this row's failure, not the job's
            metrics.dead_letter_counter(POSTPROCESS).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                POSTPROCESS, e, key=row.get(KEY_FIELD), model=self._model_name))
            return
        yield result


class PostprocessRows(beam.PTransform):
    """Prediction rows -> (rows with `model_name`'s outputs post-processed, dead letters)."""

    def __init__(self, model_name: str, steps):
        super().__init__()
        self._model_name = model_name
        self._steps = tuple(steps)

    def expand(self, rows):
        result = rows | beam.ParDo(PostprocessRowsFn(self._model_name, self._steps)).with_outputs(
            DEAD_LETTER_TAG, main="rows")
        return result.rows, result[DEAD_LETTER_TAG]
