"""The engines: what calls a SavedModel signature on a batch of serialized tf.Examples.

An engine is one thing, a BatchCall: records -> {output name: array [n, ...]}. Two are registered
in ENGINES, each a loader (path, signature, keep_logs) -> BatchCall:

- "fast": tf.saved_model.load, the signature called on the whole batch, outputs kept columnar;
  no per-example proto is built (FastSignatureCall; SessionSignatureCall, the TF1 loader, for
  the SavedModels the TF2 loader cannot restore);
- "tfx-bsl": tfx-bsl's own in-process SavedModel handler, its TF1 session loader, inference and
  PredictionLog building (models.serving.tfx_bsl_call.TfxBslBatchCall), decoded back to columns.

Both give the columns models.serving.results defines for the signature's method (predict as
the signature names them; classify: classes and scores; regress: outputs), so rows do not depend
on the engine. keep_logs=True asks an engine to return PredictionLogs too, as the column
PREDICTION_LOG: tfx-bsl's native logs, or the same predict, classify or regress logs built by the
fast engine from its columns. Loading once per process, GPU set-up and timing are the jobs'
(transforms.scoring.engines), not engine code.
"""

from typing import Callable, Dict, Mapping, Protocol, Sequence

import numpy as np

from models.serving.contract import serving_meta_graph
from models.serving.methods import signature_method
from models.serving.prediction_log import PREDICTION_LOG, log_column


def _string_tensor(records: Sequence[bytes]):
    """A tf.string tensor of the records: the chunk's own where it holds one (tensor())."""
    tensor = getattr(records, "tensor", None)
    if tensor is not None:
        return tensor()
    import tensorflow as tf

    return tf.constant(list(records), tf.string)


DEFAULT_ENGINE = "fast"
TFX_BSL_ENGINE = "tfx-bsl"


class BatchCall(Protocol):
    def __call__(self, records: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """Serialized tf.Examples -> {output: array with a leading axis of len(records)}; raises
        when the model fails on the batch (the executor then isolates the records at fault)."""


class _SignatureColumns:
    """What both forms of the fast engine share: raw outputs -> the method's columns (and logs)."""

    path: str
    signature: str
    input_name: str
    method: str
    _keep_logs: bool

    def _columns(self, serialized: Sequence[bytes], outputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        method = signature_method(self.method)
        arrays = method.columns(outputs, len(serialized))
        if self._keep_logs:  # the PredictionLogs tfx-bsl writes for the method, from the columns
            arrays[PREDICTION_LOG] = log_column(method.logs(serialized, arrays, self.signature, self.input_name))
        return arrays


class FastSignatureCall(_SignatureColumns):
    """One signature of a SavedModel (tf.saved_model.load), callable on a batch of records."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False):
        import tensorflow as tf

        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._loaded = tf.saved_model.load(path)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{path} has no signature {signature!r}")
        self._fn = self._loaded.signatures[signature]
        (self.input_name,) = self._fn.structured_input_signature[1]
        # the TF2 loader drops method names; saved_model.pb still has them
        self.method = serving_meta_graph(path).signature_def[signature].method_name

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        outputs = self._fn(**{self.input_name: _string_tensor(serialized)})
        return self._columns(serialized, {name: value.numpy() for name, value in outputs.items()})


class SessionSignatureCall(_SignatureColumns):
    """The fast engine for SavedModels the TF2 loader cannot restore (a tf-keras Trainer export
    with optimizer slot variables: "'_UserObject' object has no attribute 'add_slot'"): the TF1
    loader, as tfx-bsl uses, and the signature's tensors run in a session on the whole batch."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False):
        import tensorflow as tf

        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self._session, [tf.saved_model.SERVING], path)
        if signature not in meta_graph.signature_def:
            raise ValueError(f"{path} has no signature {signature!r}")
        signature_def = meta_graph.signature_def[signature]
        ((self.input_name, tensor),) = signature_def.inputs.items()
        self._feed = tensor.name
        self._fetches = {name: info.name for name, info in signature_def.outputs.items()}
        self.method = signature_def.method_name

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        outputs = self._session.run(self._fetches, feed_dict={self._feed: list(serialized)})
        return self._columns(serialized, outputs)


def load_fast(path: str, signature: str, keep_logs: bool = False) -> BatchCall:
    """The fast engine: the TF2 loader, or the TF1 loader where the TF2 one cannot restore the
    model (the error is kept when neither can)."""
    try:
        return FastSignatureCall(path, signature, keep_logs)
    except Exception as tf2_error:  # pylint: disable=broad-except  # the TF1 loader may still load it
        try:
            return SessionSignatureCall(path, signature, keep_logs)
        except Exception:  # pylint: disable=broad-except  # the first error says more
            raise tf2_error from None


def _tfx_bsl_call(path: str, signature: str, keep_logs: bool = False):
    from models.serving.tfx_bsl_call import TfxBslBatchCall  # tfx-bsl loads only where it is used

    return TfxBslBatchCall(path, signature, keep_logs=keep_logs)


ENGINES: Dict[str, Callable[..., BatchCall]] = {DEFAULT_ENGINE: load_fast, TFX_BSL_ENGINE: _tfx_bsl_call}
