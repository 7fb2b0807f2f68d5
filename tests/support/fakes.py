"""Fakes for the scoring core's injected parts: a batch call and a model description.

The executor (transforms.scoring.executor.score_chunk) takes its model calls as parameters, so
its record-level logic is tested here without TensorFlow models: a FakeBatchCall behaves like a
model that parses its records with the feature spec (it raises on a batch holding a record that
does not fit, as tf.io.parse_example does) and can be told to fail on chosen records.
"""

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from models.serving.examples import RecordError, feature_values, parse_example, validate_example
from models.serving.feature_spec import Feature
from models.serving.model import ServingModel

PREDICT = "tensorflow/serving/predict"


def fake_model(name: str, spec: Sequence[Feature], outputs: Sequence[str] = ("y",)) -> ServingModel:
    """A ServingModel description for a graph node whose calls are fakes (no SavedModel behind it)."""
    return ServingModel(name=name, path=f"/fake/{name}", signature="serving_default",
                        feature_spec=tuple(spec), spec_source="fake", outputs=tuple(outputs), method=PREDICT,
                        output_specs=tuple((o, "float32", (-1, 1)) for o in outputs))


class FakeBatchCall:
    """records -> {"y": [n, 1]}, y = the sum of the float feature `feature` of each record.

    Raises (like a parsing model) on any batch with a record that does not fit `spec`, and on any
    batch holding a record for which fail_on(record) is true. calls holds each batch's size.
    """

    def __init__(self, spec: Sequence[Feature], feature: str = "x",
                 fail_on: Optional[Callable[[bytes], bool]] = None, error: type = ValueError):
        self.spec = tuple(spec)
        self.feature = feature
        self.fail_on = fail_on or (lambda record: False)
        self.error = error
        self.calls: List[int] = []

    def __call__(self, records: Sequence[bytes]) -> Dict[str, np.ndarray]:
        self.calls.append(len(records))
        values = []
        for record in records:
            try:
                validate_example(record, self.spec)
            except RecordError as e:
                raise self.error(f"parse failed: {e}") from e
            if self.fail_on(record):
                raise self.error("the model refuses this record")
            values.append(sum(feature_values(parse_example(record), self.feature)))
        return {"y": np.asarray(values, np.float32).reshape(-1, 1)}
