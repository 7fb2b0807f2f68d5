"""Post-processing of one model's outputs: pure functions on columnar outputs.

A post-processor maps {output name: array [n, ...]} to {output name: array [n, ...]} for a batch of
n records, so a whole chunk is post-processed in a few numpy calls: by the executor
(transforms.scoring.executor.postprocess_result) on a model's outputs, and by
transforms.scoring.tfx_bsl_logs.ToPredictionRows on the outputs of tfx-bsl's PredictionLogs.

- Classify: argmax (or a threshold for a binary head), optional labels and top-k with scores;
- Regress: one value per record instead of a one-element list, optionally rounded;
- Keep: only the named outputs;
- CallFunction: a user's own function, by reference ("package.module:function") or as a callable.

Each step also has check(specs) -> specs: the same rules on the outputs' dtypes and per-record
shapes from the SignatureDef, so transforms.graph.model refuses a step that would fail on every
record before the job runs (a missing output, labels that do not match the classes, a step that
would overwrite an output).
"""

import difflib
import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Outputs = Dict[str, np.ndarray]
# Output name -> (dtype name, per-record shape); "string" for text, None where unknown.
OutputSpec = Tuple[Optional[str], Optional[Tuple[int, ...]]]
Specs = Dict[str, OutputSpec]


class PostprocessError(ValueError):
    """A post-processing step that cannot be built: unknown option, bad labels, missing function."""


def read_labels(labels: Union[str, Sequence[str], None]) -> Optional[Tuple[str, ...]]:
    """A list of labels, or a vocabulary file with one label per line (blank lines ignored)."""
    if labels is None:
        return None
    if isinstance(labels, str):
        import tensorflow as tf  # gfile: labels may live next to the model on GCS

        with tf.io.gfile.GFile(labels) as f:
            labels = [line.strip() for line in f if line.strip()]
    labels = tuple(str(label) for label in labels)
    if len(labels) < 2:
        raise PostprocessError(f"labels: need at least 2, got {list(labels)}")
    return labels


def _single_output(outputs: Mapping[str, Any], name: Optional[str], step: str) -> str:
    if name is not None:
        if name not in outputs:
            raise KeyError(f"{step}: no output {name!r} (outputs: {sorted(outputs)}){_did_you_mean(name, outputs)}")
        return name
    if len(outputs) != 1:
        raise KeyError(f"{step}: the model has outputs {sorted(outputs)}; name one with 'output'")
    return next(iter(outputs))


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _resolve(specs: Specs, name: Optional[str], step: str) -> str:
    """_single_output for check(): the same rule, raised as a PostprocessError."""
    try:
        return _single_output(specs, name, step)
    except KeyError as e:
        raise PostprocessError(e.args[0]) from None


def _is_float(dtype: str) -> bool:
    return dtype != "string" and np.dtype(dtype).kind == "f"


class Classify:
    """Scores or probabilities [n, classes] (or [n] / [n, 1] for a binary head) -> label, score.

    Adds `label` (the label text, or the class index without labels) and `score` (the predicted
    class's score); with top_k, also `top_labels` and `top_scores` [n, k], best first. A binary head
    (one score per record) is thresholded: label 1 when score >= threshold (default 0.5), and its
    score is that of the chosen label (p or 1 - p). prefix names the added outputs
    (prefix + "label", ...) so two heads of one model can be classified.
    """

    def __init__(self, output: Optional[str] = None, labels: Union[str, Sequence[str], None] = None,
                 top_k: Optional[int] = None, threshold: Optional[float] = None, prefix: str = ""):
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise PostprocessError(f"classify: top_k must be a positive integer, got {top_k!r}")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise PostprocessError(f"classify: threshold must be within [0, 1], got {threshold!r}")
        self.output = output
        self.labels = read_labels(labels)
        self.top_k = top_k
        self.threshold = threshold
        self.prefix = prefix

    def _names(self, indices: np.ndarray) -> np.ndarray:
        if self.labels is None:
            return indices.astype(np.int64)
        if indices.size and int(indices.max()) >= len(self.labels):
            raise ValueError(f"classify: class {int(indices.max())} has no label "
                             f"({len(self.labels)} labels given)")
        return np.asarray(self.labels, dtype=object)[indices]

    def __call__(self, outputs: Outputs) -> Outputs:
        name = _single_output(outputs, self.output, "classify")
        scores = np.asarray(outputs[name])
        if scores.dtype.kind != "f":
            raise ValueError(f"classify: output {name!r} holds {scores.dtype}, not scores")
        n = scores.shape[0]
        binary = scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1)
        if scores.ndim > 2:
            raise ValueError(f"classify: output {name!r} has per-record shape {list(scores.shape[1:])}; "
                             "expected [classes]")
        result = dict(outputs)
        if binary:
            if self.labels is not None and len(self.labels) != 2:
                raise ValueError(f"classify: {len(self.labels)} labels for a binary head (2 classes)")
            p = scores.reshape(n)
            threshold = 0.5 if self.threshold is None else float(self.threshold)
            chosen = (p >= threshold).astype(np.int64)
            result[self.prefix + "label"] = self._names(chosen)
            result[self.prefix + "score"] = np.where(chosen == 1, p, 1 - p).astype(scores.dtype)
            return result
        if self.threshold is not None:
            raise ValueError(f"classify: threshold applies to a binary head; {name!r} has "
                             f"{scores.shape[1]} classes")
        if self.labels is not None and len(self.labels) != scores.shape[1]:
            raise ValueError(f"classify: {len(self.labels)} labels for {scores.shape[1]} classes")
        best = np.argmax(scores, axis=1)
        result[self.prefix + "label"] = self._names(best)
        result[self.prefix + "score"] = scores[np.arange(n), best]
        if self.top_k:
            k = min(self.top_k, scores.shape[1])
            # stable sort on the negated scores: ties keep class order, like argmax
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            result[self.prefix + "top_labels"] = self._names(top)
            result[self.prefix + "top_scores"] = np.take_along_axis(scores, top, axis=1)
        return result

    def added(self, binary: bool = False) -> Tuple[str, ...]:
        names = ("label", "score") + (("top_labels", "top_scores") if self.top_k and not binary else ())
        return tuple(self.prefix + n for n in names)

    def check(self, specs: Specs) -> Specs:
        name = _resolve(specs, self.output, "classify")
        dtype, shape = specs[name]
        if dtype is not None and not _is_float(dtype):
            raise PostprocessError(f"classify: output {name!r} holds {dtype}, not scores")
        binary = shape is not None and (shape == () or shape == (1,))
        classes = shape[0] if shape is not None and len(shape) == 1 and shape[0] > 0 else None
        if shape is not None and len(shape) > 1:
            raise PostprocessError(f"classify: output {name!r} has per-record shape {list(shape)}; "
                                   "expected [classes]")
        if binary:
            classes = 2
            if self.top_k:
                raise PostprocessError(f"classify: top_k applies to a multi-class head; {name!r} is a "
                                       "binary head (one score per record)")
        elif self.threshold is not None and classes is not None:
            raise PostprocessError(f"classify: threshold applies to a binary head; {name!r} has "
                                   f"{classes} classes")
        if classes is not None and self.labels is not None and len(self.labels) != classes:
            raise PostprocessError(f"classify: {len(self.labels)} labels for {classes} classes "
                                   f"(output {name!r})")
        if classes is not None and not binary and self.top_k and self.top_k > classes:
            raise PostprocessError(f"classify: top_k {self.top_k} is more than the {classes} classes "
                                   f"of output {name!r}")
        label_dtype = "string" if self.labels is not None else "int64"
        added = dict(zip(self.added(binary), [(label_dtype, ()), (dtype, ()),
                                              (label_dtype, (self.top_k,)), (dtype, (self.top_k,))]))
        return {**specs, **added}


class Regress:
    """One value per record: [n, 1] -> [n] (a list of one becomes a number), optionally rounded."""

    def __init__(self, output: Optional[str] = None, round: Optional[int] = None):  # noqa: A002
        if round is not None and not isinstance(round, int):
            raise PostprocessError(f"regress: round must be a number of decimals, got {round!r}")
        self.output = output
        self.decimals = round

    def __call__(self, outputs: Outputs) -> Outputs:
        name = _single_output(outputs, self.output, "regress")
        values = np.asarray(outputs[name])
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        elif values.ndim != 1:
            raise ValueError(f"regress: output {name!r} has per-record shape {list(values.shape[1:])}; "
                             "expected one value")
        if self.decimals is not None:
            values = np.round(values, self.decimals)
        return {**outputs, name: values}

    def check(self, specs: Specs) -> Specs:
        name = _resolve(specs, self.output, "regress")
        dtype, shape = specs[name]
        if shape is not None and shape not in ((), (1,)):
            raise PostprocessError(f"regress: output {name!r} has per-record shape {list(shape)}; "
                                   "expected one value")
        return {**specs, name: (dtype, ())}


class Keep:
    """Only the named outputs, in that order."""

    def __init__(self, names: Sequence[str]):
        if isinstance(names, str) or not names:
            raise PostprocessError(f"keep: a non-empty list of output names, got {names!r}")
        self.names = tuple(names)  # may name outputs earlier steps add: checked when the step runs

    def __call__(self, outputs: Outputs) -> Outputs:
        missing = [n for n in self.names if n not in outputs]
        if missing:
            raise KeyError(self._missing_message(missing, outputs))
        return {n: outputs[n] for n in self.names}

    @staticmethod
    def _missing_message(missing, outputs) -> str:
        return f"keep: no output {missing} (outputs: {sorted(outputs)}){_did_you_mean(missing[0], outputs)}"

    def check(self, specs: Specs) -> Specs:
        missing = [n for n in self.names if n not in specs]
        if missing:
            raise PostprocessError(self._missing_message(missing, specs))
        return {n: specs[n] for n in self.names}


def import_function(reference: str) -> Callable:
    """'package.module:function' -> the function (imported on the worker too, so it must be installed)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise PostprocessError(f"function: {reference!r} is not 'package.module:function'")
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise PostprocessError(f"function: cannot import {reference!r}: {e}") from e
    if not callable(target):
        raise PostprocessError(f"function: {reference!r} is not callable")
    return target


class CallFunction:
    """A user's function fn(outputs, **kwargs) -> outputs on columnar arrays [n, ...].

    Given as a reference, it is imported where it runs (Dataflow workers need its package).
    """

    def __init__(self, function: Union[str, Callable], kwargs: Optional[Mapping[str, Any]] = None):
        self.reference = function if isinstance(function, str) else None
        self._function = import_function(function) if isinstance(function, str) else function
        if not callable(self._function):
            raise PostprocessError(f"function: {function!r} is not callable")
        self.kwargs = dict(kwargs or {})

    def __getstate__(self):  # pickle the reference, not the function, when there is one
        state = dict(self.__dict__)
        if self.reference:
            state["_function"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.reference:
            self._function = import_function(self.reference)

    def __call__(self, outputs: Outputs) -> Outputs:
        result = self._function(dict(outputs), **self.kwargs)
        if not isinstance(result, Mapping):
            raise TypeError(f"post-processing function returned {type(result).__name__}, not a dict")
        n = len(next(iter(outputs.values()))) if outputs else 0
        arrays = {}
        for name, value in result.items():
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(f"post-processing function: output {name!r} has shape {value.shape}; "
                                 f"expected a leading axis of {n} (one value per record)")
            arrays[str(name)] = value
        return arrays

    def check(self, specs: Specs) -> Optional[Specs]:
        return None  # what a user's function returns is only known when it runs


STEPS = {"classify": Classify, "regress": Regress, "keep": Keep, "function": CallFunction}
FUNCTION_FLAG = "--allow_graph_functions"


def step_from_config(config: Mapping[str, Any], allow_functions: bool = True):
    """One graph-file step, e.g. {"classify": {"output": "probs", "top_k": 3}} or {"keep": ["label"]}.
    Without allow_functions a `function:` step is refused before anything is imported."""
    if not isinstance(config, Mapping) or len(config) != 1:
        raise PostprocessError(f"a post-processing step is one of {sorted(STEPS)} with its options, "
                               f"got {config!r}")
    (kind, options), = config.items()
    if kind not in STEPS:
        raise PostprocessError(f"unknown post-processing step {kind!r}; choose one of {sorted(STEPS)}")
    if kind == "keep":
        return Keep(options)
    if kind == "function":
        return _function_step(options, allow_functions)
    try:
        return STEPS[kind](**dict(options or {}))
    except TypeError as e:
        raise PostprocessError(f"{kind}: {e}") from e


def _function_step(options: Any, allow_functions: bool) -> CallFunction:
    """A graph file's `function:` step (a reference, or {name, args}); refused, before anything is
    imported, without allow_functions."""
    if not allow_functions:
        raise PostprocessError(
            f"function step {repr(options)[:200]} refused: it would import and run whatever the graph file "
            f"names (any installed module's callable, a shell command through pydoc:pipepager); "
            f"the steps without {FUNCTION_FLAG} are {sorted(set(STEPS) - {'function'})}. Give "
            f"{FUNCTION_FLAG} only for a graph file you trust like your own code")
    if isinstance(options, str):
        return CallFunction(options)
    options = dict(options or {})
    unknown = set(options) - {"name", "args"}
    if unknown or "name" not in options:
        raise PostprocessError(f"function: give 'name' (package.module:function) and optional "
                               f"'args', got {sorted(options)}")
    return CallFunction(options["name"], options.get("args"))


def check_steps(steps: Sequence[Any], specs: Specs) -> None:
    """Run each step's check over the outputs' specs, in order; raises PostprocessError naming the
    step (1-based) and the problem. Stops checking at a user's function (its outputs are unknown).

    A step may not overwrite an output that exists before it (the model's own, or one an earlier
    step added): a classify step adding 'score' to a model that has a 'score' output is refused.
    """
    origin = {name: "the model's output" for name in specs}
    for number, step in enumerate(steps, 1):
        kind = type(step).__name__.lower()
        if isinstance(step, Classify):
            clash = [n for n in step.added() if n in origin]
            if clash:
                raise PostprocessError(
                    f"post-processing step {number}: {kind} adds {clash[0]!r}, which would overwrite "
                    f"{origin[clash[0]]} {clash[0]!r}; give the step a prefix (e.g. prefix: {kind}_)")
        try:
            checked = step.check(specs)
        except PostprocessError as e:
            raise PostprocessError(f"post-processing step {number}: {e}") from None
        if checked is None:
            return
        for name in checked:
            origin.setdefault(name, f"step {number}'s output")
        origin = {n: o for n, o in origin.items() if n in checked}
        specs = checked


def apply_steps(steps: Sequence[Callable[[Outputs], Outputs]], outputs: Outputs) -> Outputs:
    for step in steps:
        outputs = step(outputs)
    return outputs


def as_batch_of_one(json_outputs: Mapping[str, Any]) -> Outputs:
    """A prediction row's outputs for one model (JSON values) -> arrays with a batch axis of one."""
    arrays: Dict[str, np.ndarray] = {}
    for name, value in json_outputs.items():
        array = np.asarray([value])
        if array.dtype.kind == "U":
            array = array.astype(object)
        arrays[name] = array
    return arrays


def first_of_batch(outputs: Outputs) -> Dict[str, Any]:
    return {name: value[0] for name, value in outputs.items()}

