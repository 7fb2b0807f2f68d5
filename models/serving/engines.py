"""The engines: what calls a SavedModel signature on a batch of serialized tf.Examples.

An engine is one thing, a BatchCall: records -> {output name: array [n, ...]}. Two are registered
in ENGINES, each a loader (path, signature, keep_logs, feature_spec) -> BatchCall:

- "fast": tf.saved_model.load, the signature called on the whole batch, outputs kept columnar;
  no per-example proto is built (FastSignatureCall; SessionSignatureCall, the TF1 loader, for
  the SavedModels the TF2 loader cannot restore). A signature that takes tensors gets the
  batch parsed into them by feature_spec (models.serving.dense), its PredictionLogs as predict
  logs of those tensors;
- "tfx-bsl": tfx-bsl's own in-process SavedModel handler, its TF1 session loader, inference and
  PredictionLog building (models.serving.tfx_bsl_call.TfxBslBatchCall), decoded back to columns;
  serialized tf.Example signatures only, as tfx-bsl's RunInference.

Both give the columns models.serving.results defines for the signature's method (predict as
the signature names them; classify: classes and scores; regress: outputs), so rows do not depend
on the engine. keep_logs=True asks an engine to return PredictionLogs too, as the column
PREDICTION_LOG: tfx-bsl's native logs, or the same predict, classify or regress logs built by the
fast engine from its columns. Loading once per process, GPU set-up and timing are the jobs'
(transforms.scoring.engines), not engine code.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence

import numpy as np

from models.serving.contract import serving_meta_graph
from models.serving.dense import TensorInputs, inputs_problem, scatter_outputs, signature_inputs, tensor_input_spec
from models.serving.feature_spec import FeatureSpec
from models.serving.methods import signature_method
from models.serving.prediction_log import PREDICTION_LOG, log_column, tensor_predict_logs


def _feature_arrays(records: Sequence[bytes]) -> Optional[Mapping[str, np.ndarray]]:
    """The records' features as arrays where their source read them so (a columnar chunk's
    feature_arrays()), else None."""
    arrays = getattr(records, "feature_arrays", None)
    return arrays() if arrays is not None else None


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
    """What both forms of the fast engine share: raw outputs -> the method's columns (and logs),
    and, for a signature that takes tensors, the records parsed into them (models.serving.dense)."""

    path: str
    signature: str
    input_name: str
    method: str
    _keep_logs: bool
    _tensors: Optional[TensorInputs] = None

    def _set_inputs(self, input_names: Sequence[str], feature_spec: Optional[FeatureSpec]) -> None:
        """Reads the signature's inputs: one of serialized tf.Example, or tensors fed by a spec
        (the one given, else the one the signature's inputs give)."""
        inputs = signature_inputs(self.path, self.signature, feature_spec or ())
        if not inputs:
            (self.input_name,) = input_names
            return
        self.input_name = ""
        self._tensors = TensorInputs(tensor_input_spec(inputs, feature_spec or ()), list(inputs))

    def _arrays_inputs(self, serialized: Sequence[bytes]) -> Optional[Dict[str, np.ndarray]]:
        arrays = _feature_arrays(serialized)
        return None if arrays is None else self._tensors.from_arrays(arrays)

    def _columns(self, serialized: Sequence[bytes], outputs: Mapping[str, np.ndarray],
                 inputs: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        method = signature_method(self.method)
        arrays = method.columns(outputs, len(serialized))
        if self._keep_logs:  # the PredictionLogs tfx-bsl writes for the method, from the columns
            logs = tensor_predict_logs(inputs, arrays, self.signature) if inputs is not None else \
                method.logs(serialized, arrays, self.signature, self.input_name)
            arrays[PREDICTION_LOG] = log_column(logs)
        return arrays

    def _call_tensors(self, serialized: Sequence[bytes], run: Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]]
                      ) -> Dict[str, np.ndarray]:
        """A batch through a signature of tensors: its arrays where the source read them so, else
        parsed once; called once per group of records whose variable-length values batch together."""
        arrays = self._arrays_inputs(serialized)
        if arrays is not None:
            return self._columns(serialized, run(arrays), arrays if self._keep_logs else None)
        parsed = self._tensors.parse(_string_tensor(serialized))
        if self._tensors.fixed:
            groups = [(np.arange(len(serialized)), parsed)]
        else:
            groups = self._tensors.groups(parsed)
        parts = [(positions, run(inputs)) for positions, inputs in groups]
        outputs = parts[0][1] if len(parts) == 1 else scatter_outputs(len(serialized), parts)
        inputs = None
        if self._keep_logs:
            inputs = scatter_outputs(len(serialized), [(p, {k: np.asarray(v) for k, v in g.items()})
                                                       for p, g in groups])
        return self._columns(serialized, outputs, inputs)


class FastSignatureCall(_SignatureColumns):
    """One signature of a SavedModel (tf.saved_model.load), callable on a batch of records."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False,
                 feature_spec: Optional[FeatureSpec] = None):
        import tensorflow as tf

        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._loaded = tf.saved_model.load(path)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{path} has no signature {signature!r}")
        self._fn = self._loaded.signatures[signature]
        self._set_inputs(list(self._fn.structured_input_signature[1]), feature_spec)
        self._parse_and_run = None
        if self._tensors is not None and self._tensors.fixed:
            # parse and call as one graph: one TF call per batch, as for a tf.Example signature
            # (autograph off: nothing to convert, and it would read this module's source from disk)
            self._parse_and_run = tf.function(self._parsed_outputs, input_signature=[tf.TensorSpec([None], tf.string)],
                                              autograph=False)
        # the TF2 loader drops method names; saved_model.pb still has them
        self.method = serving_meta_graph(path).signature_def[signature].method_name

    def _parsed_outputs(self, records):
        inputs = self._tensors.parse(records)
        return self._fn(**inputs), (inputs if self._keep_logs else {})

    def _run(self, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self._fn(**inputs).items()}

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        if self._parse_and_run is not None and _feature_arrays(serialized) is None:
            outputs, inputs = self._parse_and_run(_string_tensor(serialized))
            return self._columns(serialized, {name: value.numpy() for name, value in outputs.items()},
                                 {name: value.numpy() for name, value in inputs.items()} if self._keep_logs else None)
        if self._tensors is not None:
            return self._call_tensors(serialized, self._run)
        return self._columns(serialized, self._run({self.input_name: _string_tensor(serialized)}))


class SessionSignatureCall(_SignatureColumns):
    """The fast engine for SavedModels the TF2 loader cannot restore (a tf-keras Trainer export
    with optimizer slot variables: "'_UserObject' object has no attribute 'add_slot'"): the TF1
    loader, as tfx-bsl uses, and the signature's tensors run in a session on the whole batch."""

    def __init__(self, path: str, signature: str, keep_logs: bool = False,
                 feature_spec: Optional[FeatureSpec] = None):
        import tensorflow as tf

        self.path = path
        self.signature = signature
        self._keep_logs = keep_logs
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self._session, [tf.saved_model.SERVING], path)
        if signature not in meta_graph.signature_def:
            raise ValueError(f"{path} has no signature {signature!r}")
        signature_def = meta_graph.signature_def[signature]
        self._feeds = {name: info.name for name, info in signature_def.inputs.items()}
        self._set_inputs(list(self._feeds), feature_spec)
        self._fetches = {name: info.name for name, info in signature_def.outputs.items()}
        self.method = signature_def.method_name

    def _run(self, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        feed = {self._feeds[name]: value.numpy() if hasattr(value, "numpy") else value
                for name, value in inputs.items()}
        return self._session.run(self._fetches, feed_dict=feed)

    def __call__(self, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
        if self._tensors is not None:
            return self._call_tensors(serialized, self._run)
        return self._columns(serialized, self._run({self.input_name: list(serialized)}))


def load_fast(path: str, signature: str, keep_logs: bool = False, feature_spec: Optional[FeatureSpec] = None
              ) -> BatchCall:
    """The fast engine: the TF2 loader, or the TF1 loader where the TF2 one cannot restore the
    model (the error is kept when neither can). feature_spec: the spec records are parsed into a
    signature's tensors with (default: the one its inputs give)."""
    try:
        return FastSignatureCall(path, signature, keep_logs, feature_spec)
    except Exception as tf2_error:  # pylint: disable=broad-except  # the TF1 loader may still load it
        try:
            return SessionSignatureCall(path, signature, keep_logs, feature_spec)
        except Exception:  # pylint: disable=broad-except  # the first error says more
            raise tf2_error from None


def _tfx_bsl_call(path: str, signature: str, keep_logs: bool = False, feature_spec: Optional[FeatureSpec] = None):
    problem = inputs_problem(path, signature)
    if problem:  # what tfx-bsl would fail on at its first batch, said as it loads
        raise ValueError(problem)
    from models.serving.tfx_bsl_call import TfxBslBatchCall  # tfx-bsl loads only where it is used

    return TfxBslBatchCall(path, signature, keep_logs=keep_logs)


ENGINES: Dict[str, Callable[..., BatchCall]] = {DEFAULT_ENGINE: load_fast, TFX_BSL_ENGINE: _tfx_bsl_call}
