"""The tfx-bsl engine: tfx-bsl's own SavedModel handler under Beam's RunInference.

tfx-bsl's public RunInference expands to exactly base.RunInference(_ModelHandlerWrapper(handler)).
We build that same pair so that batch sizes take effect (tfx-bsl's wrapper does not forward
batch_elements_kwargs, DESIGN.md fact 3) and so that Beam's exception handling can catch a failing
batch (transforms.inference isolates the records the model rejects).
"""

from typing import Any, Mapping, Optional

from tfx_bsl.beam import run_inference as tfx_run_inference

from models.tfx_bsl_call import inference_spec
from transforms.runtime.gpu import GpuSettings


class KeyedTfxBslHandler(tfx_run_inference._ModelHandlerWrapper):  # pylint: disable=protected-access
    """tfx-bsl's keyed handler wrapper ((key, bytes) -> (key, PredictionLog)), with our batch sizes."""

    def __init__(self, model_path: str, signature: str, batching: Mapping[str, int],
                 project: Optional[str] = None, gpu: Optional[GpuSettings] = None):
        super().__init__(tfx_run_inference.create_model_handler(
            inference_spec(model_path, signature), None, project))
        self._batching = dict(batching)
        self._gpu = gpu or GpuSettings()

    def load_model(self):
        self._gpu.apply()  # before tfx-bsl's TF1 session claims the GPU
        return super().load_model()

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

