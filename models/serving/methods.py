"""One object per SignatureDef method: what TF Serving's predict, classify and regress mean.

Each Method knows its names (`name`, what `models.prepare --method` takes; `method_name`, the
SignatureDef's), its one input's key, the columns its outputs give rows (columns), the specs of
those columns from a signature's output specs (output_specs: what schemas and launch checks
read), and the PredictionLogs tfx-bsl writes for it (logs). The rules themselves are pure
functions in models.serving.results. A signature of any other method name is read as predict,
as tfx-bsl's handler reads it.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from models.serving.prediction_log import predict_log
from models.serving.results import (CLASSES, OUTPUTS, SCORES, Spec, classify_columns, classify_log,
                                    predict_columns, regress_columns, regress_log)


class Method:
    name = ""
    method_name = ""
    input_key = "inputs"  # TF Serving's Classify and Regress APIs' key

    def columns(self, outputs: Mapping[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
        """The columns rows are built from, for a batch of n (raises for outputs that break the rule)."""
        raise NotImplementedError

    def output_specs(self, specs: Sequence[Spec]) -> Tuple[Spec, ...]:
        """The specs of the columns made from outputs of these specs (-1 an unknown size, None an
        unknown rank). A signature the rule refuses keeps its own specs (its batches fail with the reason)."""
        return tuple(specs)

    def logs(self, serialized: Sequence[bytes], columns: Mapping[str, np.ndarray], signature: str,
             input_name: str) -> List[object]:
        """The PredictionLog of each record, as tfx-bsl writes it for this method."""
        raise NotImplementedError


class Predict(Method):
    """Every output as the signature names it, one row per input."""
    name, method_name, input_key = "predict", "tensorflow/serving/predict", "examples"

    def columns(self, outputs, n):
        return predict_columns(outputs, n)

    def logs(self, serialized, columns, signature, input_name):
        return [predict_log(r, {n: v[i] for n, v in columns.items()}, signature, input_name)
                for i, r in enumerate(serialized)]


class Classify(Method):
    """"classes" (k strings) and "scores" (k float32) per record, as TF Serving's Classify answers."""
    name, method_name = "classify", "tensorflow/serving/classify"

    def columns(self, outputs, n):
        return classify_columns(outputs, n)

    def output_specs(self, specs):
        shapes = {name: shape for name, _, shape in specs}
        if CLASSES not in shapes and SCORES not in shapes:
            return tuple(specs)
        k = next((s[1] for s in (shapes.get(SCORES), shapes.get(CLASSES)) if s is not None and len(s) == 2), -1)
        return (CLASSES, "string", (-1, k)), (SCORES, "float32", (-1, k))

    def logs(self, serialized, columns, signature, input_name):
        return [classify_log(r, columns[CLASSES][i], columns[SCORES][i]) for i, r in enumerate(serialized)]


class Regress(Method):
    """"outputs", one float32 per record (a [n, 1] output too), as TF Serving's Regress answers."""
    name, method_name = "regress", "tensorflow/serving/regress"

    def columns(self, outputs, n):
        return regress_columns(outputs, n)

    def output_specs(self, specs):
        if OUTPUTS in {name for name, _, _ in specs}:
            return ((OUTPUTS, "float32", (-1,)),)
        return tuple(specs)

    def logs(self, serialized, columns, signature, input_name):
        return [regress_log(r, columns[OUTPUTS][i]) for i, r in enumerate(serialized)]


PREDICT, CLASSIFY, REGRESS = Predict(), Classify(), Regress()
METHODS = (PREDICT, CLASSIFY, REGRESS)
_BY_METHOD_NAME = {m.method_name: m for m in METHODS}
_BY_NAME = {m.name: m for m in METHODS}


def signature_method(method_name: Optional[str]) -> Method:
    """The Method of a SignatureDef's method name (any other name: predict)."""
    return _BY_METHOD_NAME.get(method_name or "", PREDICT)


def method_named(name: str) -> Method:
    """The Method a short name names (models.prepare --method); KeyError for another."""
    return _BY_NAME[name]
