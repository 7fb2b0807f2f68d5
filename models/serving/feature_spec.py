"""The feature spec: which tf.Example features a model reads, with storage dtype and fixed shape.

A spec is the one description shared by export (parsing inside the signature), validation of
records before inference, golden examples for verification and, later, conversion of rows and
JSON payloads. It is plain data, serialisable to JSON, with no TensorFlow import at module level.
"""

import dataclasses
import json
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from models.serving.preprocess_spec import IMAGE, Preprocess, PreprocessSpecError, preprocess_from_json

# tf.Example stores three kinds of lists; every feature is stored as one of them.
STORAGE_DTYPES = ("float32", "int64", "string")
SPEC_FILE = "assets.extra/feature_spec.json"
RAW = "raw"

_MODEL_DTYPE_TO_STORAGE = {
    "float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float32",
    "int8": "int64", "int16": "int64", "int32": "int64", "int64": "int64",
    "uint8": "int64", "uint16": "int64", "uint32": "int64", "uint64": "int64", "bool": "int64",
    "string": "string",
}


class FeatureSpecError(ValueError):
    """A feature spec that cannot be used: unsupported dtype, unknown shape, bad JSON."""


@dataclasses.dataclass(frozen=True)
class Feature:
    """One tf.Example feature: fixed-length (shape), or variable-length (varlen).

    dtype is how the value is stored in the tf.Example (float32, int64 or string); model_dtype is
    what the model input expects, reached by a cast inside the serving signature. default, when
    set, fills the feature for records that lack it; otherwise the feature is required.

    encoding "raw" stores the whole tensor as one bytes value (tf.io.decode_raw of model_dtype,
    reshaped to shape): the compact way to ship images and other dense numeric blocks.

    preprocess (models.serving.preprocess_spec), when set, says the feature holds one raw value (encoded
    image bytes or text, dtype string, shape []) that preprocessing inside the signature turns
    into the model input preprocess.input. passthrough says the signature copies the feature's
    parsed value to an output of the same name (it need not be a model input).

    varlen marks a variable-length feature (tf.io.VarLenFeature, a sparse or ragged parse, as TFX
    and Estimator signatures use): any number of values of its dtype, none or missing allowed.
    It has no shape, default, encoding or preprocessing.

    input names the signature input the feature feeds when the signature takes tensors and the
    records name it otherwise (default: the input of the feature's name).
    """

    name: str
    dtype: str
    shape: Tuple[int, ...] = ()
    model_dtype: Optional[str] = None
    default: Any = None
    encoding: Optional[str] = None
    preprocess: Optional[Preprocess] = None
    passthrough: bool = False
    varlen: bool = False
    input: Optional[str] = None  # the signature input it feeds, where not the one of its name (tensor inputs)

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise FeatureSpecError(
                f"feature {self.name!r}: dtype {self.dtype!r} is not one of {STORAGE_DTYPES}")
        if self.varlen and (self.shape or self.default is not None or self.encoding or self.preprocess):
            raise FeatureSpecError(
                f"feature {self.name!r}: a variable-length feature has no shape, default, encoding or preprocess")
        if any((not isinstance(d, int)) or d < 1 for d in self.shape):
            raise FeatureSpecError(
                f"feature {self.name!r}: shape {list(self.shape)} must be fixed positive sizes "
                "(variable-length features are not supported)")
        if self.model_dtype is not None and self.model_dtype not in _MODEL_DTYPE_TO_STORAGE:
            raise FeatureSpecError(f"feature {self.name!r}: model_dtype {self.model_dtype!r} unsupported")
        if self.encoding not in (None, RAW):
            raise FeatureSpecError(f"feature {self.name!r}: encoding {self.encoding!r} is not 'raw'")
        if self.encoding == RAW:
            if self.dtype != "string" or self.model_dtype in (None, "string", "bool"):
                raise FeatureSpecError(
                    f"feature {self.name!r}: raw encoding needs dtype string and a numeric model_dtype")
            if self.default is not None:
                raise FeatureSpecError(f"feature {self.name!r}: a raw feature cannot have a default")
        if self.preprocess is not None:
            self._check_preprocess()
        if self.input is not None and (self.preprocess is not None or not isinstance(self.input, str) or not self.input):
            raise FeatureSpecError(f"feature {self.name!r}: input is the name of the signature input it feeds "
                                   "(not with preprocess)")
        if self.default is not None:
            values = flatten_default(self.default)
            if len(values) != self.size:
                raise FeatureSpecError(
                    f"feature {self.name!r}: default has {len(values)} values, "
                    f"shape {list(self.shape)} needs {self.size}")
            wrong = [v for v in values if not _fits(v, self.dtype)]
            if wrong:
                raise FeatureSpecError(
                    f"feature {self.name!r}: default value {wrong[0]!r} is not {self.dtype}")

    def _check_preprocess(self):
        if self.dtype != "string" or self.shape != () or self.encoding is not None:
            raise FeatureSpecError(
                f"feature {self.name!r}: {self.preprocess.kind} preprocessing reads one bytes value "
                "(dtype string, shape [], no encoding)")
        if self.model_dtype not in (None, "string"):
            raise FeatureSpecError(
                f"feature {self.name!r}: the model dtype of a preprocessed feature is in its preprocess entry")
        if self.preprocess.kind == IMAGE and self.default is not None:
            raise FeatureSpecError(f"feature {self.name!r}: an image feature cannot have a default")

    @property
    def model_input(self) -> str:
        """The model input this feature feeds (a passthrough-only feature feeds none of that name)."""
        if self.preprocess is not None:
            return self.preprocess.input
        return self.input or self.name

    @property
    def size(self) -> int:
        """Number of values one record holds for this feature (one bytes value when raw)."""
        return 1 if self.encoding == RAW else math.prod(self.shape)

    @property
    def stored_shape(self) -> Tuple[int, ...]:
        """The shape tf.io.parse_example reads: () for a raw feature, else shape."""
        return () if self.encoding == RAW else self.shape

    @property
    def raw_nbytes(self) -> int:
        """Byte length of a raw feature's value."""
        import numpy as np

        return math.prod(self.shape) * np.dtype(self.model_dtype).itemsize

    @property
    def input_dtype(self) -> str:
        return self.model_dtype or self.dtype

    @property
    def required(self) -> bool:
        return self.default is None and not self.varlen

    def to_json(self) -> Dict[str, Any]:
        if self.varlen:
            return {"name": self.name, "dtype": self.dtype, "varlen": True, **({"input": self.input} if self.input else {})}
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.model_dtype and self.model_dtype != self.dtype:
            out["model_dtype"] = self.model_dtype
        if self.default is not None:
            out["default"] = self.default
        if self.encoding:
            out["encoding"] = self.encoding
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess.to_json()
        if self.passthrough:
            out["passthrough"] = True
        if self.input:
            out["input"] = self.input
        return out


def _fits(value: Any, dtype: str) -> bool:
    if dtype == "string":
        return isinstance(value, (str, bytes))
    if isinstance(value, bool):
        return dtype == "int64"
    if dtype == "int64":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, (int, float))


def flatten_default(value: Any) -> List[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in flatten_default(item)]
    return [value]


FeatureSpec = Tuple[Feature, ...]


def storage_dtype_for(model_dtype: str) -> str:
    try:
        return _MODEL_DTYPE_TO_STORAGE[model_dtype]
    except KeyError:
        raise FeatureSpecError(f"model input dtype {model_dtype!r} cannot be fed from a tf.Example")


def feature_from_json(name: Optional[str], obj: Mapping[str, Any]) -> Feature:
    name = obj.get("name", name)
    if not name:
        raise FeatureSpecError(f"feature without a name: {obj}")
    unknown = set(obj) - {"name", "dtype", "shape", "model_dtype", "default", "encoding", "preprocess",
                          "passthrough", "varlen", "input"}
    if unknown:
        raise FeatureSpecError(f"feature {name!r}: unknown fields {sorted(unknown)}")
    dtype = obj.get("dtype")
    if dtype is None:
        raise FeatureSpecError(f"feature {name!r}: dtype is required")
    model_dtype = obj.get("model_dtype")
    encoding = obj.get("encoding")
    if dtype not in STORAGE_DTYPES:  # a model dtype given as dtype: store it the tf.Example way
        model_dtype, dtype = dtype, "string" if encoding == RAW else storage_dtype_for(dtype)
    try:
        preprocess = preprocess_from_json(obj["preprocess"]) if obj.get("preprocess") else None
    except PreprocessSpecError as e:
        raise FeatureSpecError(f"feature {name!r}: {e}") from e
    passthrough, varlen = obj.get("passthrough", False), obj.get("varlen", False)
    if not isinstance(passthrough, bool) or not isinstance(varlen, bool):
        raise FeatureSpecError(f"feature {name!r}: passthrough and varlen are true or false")
    return Feature(name=name, dtype=dtype, shape=tuple(obj.get("shape", ())),
                   model_dtype=model_dtype, default=obj.get("default"), encoding=encoding,
                   preprocess=preprocess, passthrough=passthrough, varlen=varlen, input=obj.get("input"))


def spec_from_json(obj: Any) -> FeatureSpec:
    """Accepts {"features": [{name, dtype, shape, ...}]}, a bare list of those, or {name: {...}}."""
    if isinstance(obj, Mapping) and "features" in obj:
        obj = obj["features"]
    if isinstance(obj, Mapping):
        features = [feature_from_json(name, value) for name, value in obj.items()]
    elif isinstance(obj, list):
        features = [feature_from_json(None, value) for value in obj]
    else:
        raise FeatureSpecError("a feature spec is a list of features or a mapping name -> feature")
    return make_spec(features)


def make_spec(features: Iterable[Feature]) -> FeatureSpec:
    features = tuple(features)
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FeatureSpecError(f"duplicate features in spec: {duplicates}")
    if not features:
        raise FeatureSpecError("a feature spec needs at least one feature")
    # a preprocessed or renamed feature feeds a model input that neither another such feature nor
    # a plain feature of that name (which feeds the input of its own name) may feed
    redirected = [f for f in features if f.preprocess is not None or f.input]
    fed = [f.model_input for f in redirected]
    clashing = sorted({n for n in fed if fed.count(n) > 1} | {
        f.model_input for f in redirected if f.model_input != f.name and f.model_input in names})
    if clashing:
        raise FeatureSpecError(f"model inputs fed by more than one feature: {clashing}")
    return features


def spec_to_json(spec: FeatureSpec) -> Dict[str, Any]:
    return {"features": [f.to_json() for f in spec]}


def load_spec_file(path: str) -> FeatureSpec:
    from apache_beam.io.filesystems import FileSystems  # gs:// as well as local paths

    try:
        with FileSystems.open(path) as f:
            obj = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise FeatureSpecError(f"feature spec {path}: not valid JSON ({e})") from e
    return spec_from_json(obj)


def override_spec(derived: FeatureSpec, overrides: FeatureSpec) -> FeatureSpec:
    """Features named in overrides replace the derived ones; overrides must name model inputs."""
    derived_names = {f.name for f in derived}
    unknown = [f.name for f in overrides if f.name not in derived_names]
    if unknown:
        raise FeatureSpecError(
            f"feature spec names {unknown}, which are not model inputs {sorted(derived_names)}")
    by_name = {f.name: f for f in overrides}
    merged = []
    for f in derived:
        o = by_name.get(f.name)
        if o is None:
            merged.append(f)
        else:
            if o.shape != f.shape:
                raise FeatureSpecError(
                    f"feature {f.name!r}: spec shape {list(o.shape)} does not match the model "
                    f"input shape {list(f.shape)}")
            merged.append(dataclasses.replace(o, model_dtype=o.model_dtype or f.input_dtype))
    return tuple(merged)


def with_passthrough(spec: FeatureSpec, names: Sequence[str], declared: Sequence[Feature] = ()
                     ) -> FeatureSpec:
    """Marks the named features as passed through, adding those the model does not read.

    A feature the spec lacks is taken from declared (a --feature_spec entry) or else added as an
    optional string of shape [] with default "" (a record without it passes through "").
    """
    by_name = {f.name: f for f in spec}
    declared_by_name = {f.name: f for f in declared}
    fed = {f.model_input: f.name for f in spec if f.preprocess is not None}
    added = []
    for name in names:
        if name in fed and name not in by_name:
            raise FeatureSpecError(
                f"passthrough {name!r} is a model input fed by feature {fed[name]!r}; pass {fed[name]!r} through")
        if name in by_name:
            by_name[name] = dataclasses.replace(by_name[name], passthrough=True)
        elif name not in [f.name for f in added]:
            base = declared_by_name.get(name) or Feature(name, "string", (), default="")
            added.append(dataclasses.replace(base, passthrough=True))
    unused = sorted(set(declared_by_name) - set(names))
    if unused:
        raise FeatureSpecError(f"feature spec names {unused}, which are neither model inputs nor passed through")
    return make_spec([by_name[f.name] for f in spec] + added)


def describe(spec: Sequence[Feature]) -> str:
    """One line per feature: a variable-length one by its dtype; a fixed-length one by its dtype
    and shape (and cast), then its default, or "required" when it has none."""
    return "\n".join(f"  {f.name}: {_describe_feature(f)}" for f in spec)


def _describe_feature(f: Feature) -> str:
    passed = ", passed through" if f.passthrough else ""
    if f.varlen:
        return f"{f.dtype}, variable length{passed}"
    notes = ("required" if f.required else f"default={f.default!r}") + passed
    if f.encoding == RAW:
        return f"raw bytes of {f.model_dtype}{list(f.shape)} ({notes})"
    if f.preprocess is not None:
        return f"{f.preprocess.describe()} ({notes})"
    cast = f" -> {f.model_dtype}" if f.model_dtype and f.model_dtype != f.dtype else ""
    return f"{f.dtype}{list(f.shape)}{cast} ({notes})"
