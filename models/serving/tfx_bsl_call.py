"""tfx-bsl's in-process SavedModel handler as a plain batch call (no pipeline around it).

Serialized examples -> {output: array [n, ...]}: the handler tfx-bsl's RunInference runs (its TF1
session loader, inference and PredictionLog building), decoded back to columns. The "tfx-bsl"
engine of the pipelines (transforms.scoring.engines) and export verification use it. Outputs
that break the method's rules (models.serving.results) raise with the real reason. With
keep_logs, tfx-bsl's own PredictionLogs (predict, classify or regress) come back too, as one more
column (models.serving.prediction_log.PREDICTION_LOG), for PredictionLog output.
"""

from typing import Dict, Optional, Sequence

import numpy as np
from tfx_bsl.public.proto import model_spec_pb2

from models.serving.prediction_log import PREDICTION_LOG, log_column, outputs_from_log
from models.serving.methods import signature_method
from models.serving.results import OutputBatchError


def inference_spec(model_path: str, signature: str) -> model_spec_pb2.InferenceSpecType:
    return model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=model_path, signature_name=[signature]))


class TfxBslBatchCall:
    def __init__(self, model_path: str, signature: str = "serving_default", project: Optional[str] = None,
                 keep_logs: bool = False):
        from tfx_bsl.beam import run_inference as tfx_run_inference

        self._handler = tfx_run_inference.create_model_handler(
            inference_spec(model_path, signature), None, project)
        self._model = self._handler.load_model()
        self._keep_logs = keep_logs
        self._method = self._handler._signatures[0].signature_def.method_name  # pylint: disable=protected-access

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        records = list(serialized)
        try:
            logs = list(self._handler.run_inference(records, self._model))
        except (TypeError, ValueError) as e:
            raise self._real_reason(records) or e
        if len(logs) != len(records):
            raise OutputBatchError(f"tfx-bsl gave {len(logs)} results for {len(records)} inputs")
        per_example = [outputs_from_log(log) for log in logs]
        outputs = {name: np.stack([o[name] for o in per_example]) for name in per_example[0]}
        if self._keep_logs:
            outputs[PREDICTION_LOG] = log_column(logs)
        return outputs

    def _real_reason(self, records) -> Optional[Exception]:
        """Why tfx-bsl refused the signature's outputs, checked on the raw outputs by the rules of
        models.serving.results: tfx-bsl's own message can be lost (its classify checks format a
        shape tuple with %, raising "not all arguments converted during string formatting")."""
        outputs = self._handler._run_inference(records, records, self._model)  # pylint: disable=protected-access
        try:
            signature_method(self._method).columns(outputs, len(records))
        except ValueError as e:
            return e
        return None
