"""Pure conversions between Python values, tf.Example protos and a feature spec.

validate_example is the per-record gate in front of inference: a record it accepts is one that
tf.io.parse_example with the spec accepts (tests/test_feature_spec.py checks that equivalence), so a
bad record becomes a dead letter instead of failing a whole batch inside the model.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from tensorflow.core.example import example_pb2

from models.serving.feature_spec import RAW, Feature, FeatureSpec, flatten_default
from models.serving.preprocess_spec import IMAGE

_KIND_BY_DTYPE = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}


class RecordError(ValueError):
    """A record that cannot go to the model. stage is 'decode' or 'validate'."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def make_example(values: Mapping[str, Any], spec: Optional[Sequence[Feature]] = None
                 ) -> example_pb2.Example:
    """Builds a tf.Example from {name: scalar | list | ndarray}.

    With a spec, each value is stored by the spec's dtype; without one, by the Python type
    (float -> float_list, int/bool -> int64_list, str/bytes -> bytes_list).
    """
    dtypes = {f.name: f.dtype for f in spec or ()}
    raw = {f.name: f for f in spec or () if f.encoding == RAW}
    example = example_pb2.Example()
    for name, value in values.items():
        if name in raw and not isinstance(value, bytes):
            value = np.asarray(value, dtype=raw[name].model_dtype).tobytes()
        flat = np.asarray(value, dtype=object).reshape(-1).tolist()
        dtype = dtypes.get(name) or _infer_dtype(flat, name)
        feature = example.features.feature[name]
        if dtype == "float32":
            feature.float_list.value.extend(float(v) for v in flat)
        elif dtype == "int64":
            feature.int64_list.value.extend(int(v) for v in flat)
        else:
            feature.bytes_list.value.extend(_as_bytes(v) for v in flat)
    return example


def _infer_dtype(flat: List[Any], name: str) -> str:
    if not flat:
        raise ValueError(f"feature {name!r}: cannot infer the dtype of an empty value")
    first = flat[0]
    if isinstance(first, (str, bytes)):
        return "string"
    if isinstance(first, (bool, int, np.integer)):
        return "int64"
    return "float32"


def parse_example(serialized: bytes) -> example_pb2.Example:
    try:
        return example_pb2.Example.FromString(serialized)
    except Exception as e:  # protobuf raises DecodeError, or others on odd input types
        raise RecordError("decode", f"not a serialized tf.Example: {e}") from e


def check_example(example: example_pb2.Example, spec: Sequence[Feature]) -> None:
    """Raises RecordError('validate') when the example does not fit the spec."""
    features = example.features.feature
    problems = []
    for f in spec:
        if f.name not in features:
            if f.required:
                problems.append(f"missing required feature {f.name!r}")
            continue
        kind = features[f.name].WhichOneof("kind")
        expected = _KIND_BY_DTYPE[f.dtype]
        if kind is None:  # no list set: TensorFlow treats it as absent
            if f.required:
                problems.append(f"feature {f.name!r} has no values")
            continue
        if kind != expected:
            problems.append(f"feature {f.name!r} is {kind[:-5]}, expected {expected[:-5]} ({f.dtype})")
            continue
        if f.varlen:  # any number of values
            continue
        # an empty list of the right kind is not absent: TensorFlow rejects it, default or not
        count = len(getattr(features[f.name], kind).value)
        if count != f.size:
            problems.append(
                f"feature {f.name!r} has {count} values, shape {list(f.stored_shape)} needs {f.size}")
        elif f.encoding == RAW and len(features[f.name].bytes_list.value[0]) != f.raw_nbytes:
            problems.append(
                f"feature {f.name!r} holds {len(features[f.name].bytes_list.value[0])} bytes, raw "
                f"{f.model_dtype}{list(f.shape)} needs {f.raw_nbytes}")
    if problems:
        raise RecordError("validate", "; ".join(problems))


def validate_example(serialized: bytes, spec: Sequence[Feature]) -> example_pb2.Example:
    """Parses and checks one serialized record; returns the parsed example or raises RecordError."""
    example = parse_example(serialized)
    check_example(example, spec)
    return example


def feature_values(example: example_pb2.Example, name: str) -> List[Any]:
    feature = example.features.feature.get(name)
    if feature is None:
        return []
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def golden_values(spec: Sequence[Feature], count: int, seed: int = 0,
                  vocabularies: Optional[Mapping[str, Sequence[str]]] = None) -> List[Dict[str, Any]]:
    """Deterministic, varied values for every feature: the inputs verification runs on.

    Image features get real PNG and JPEG bytes, of the model's size and of other sizes (so
    resizing is exercised); text features get sentences of vocabulary words (vocabularies:
    feature name -> words), out-of-vocabulary words and mixed case, shorter and longer than the
    model's length.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        row = {}
        for f in spec:
            if f.preprocess is not None and f.preprocess.kind == IMAGE:
                row[f.name] = golden_image(f.preprocess, i, rng)
            elif f.preprocess is not None:
                row[f.name] = golden_text((vocabularies or {}).get(f.name), f.preprocess.length, i, rng)
            elif f.varlen:  # 0 to 3 values: empty lists are valid too
                row[f.name] = golden_values([Feature(f.name, f.dtype, (3,), f.model_dtype)], 1, seed + i)[0][
                    f.name][:i % 4]
            elif f.encoding == RAW:
                values = rng.normal(size=f.shape) * 3
                if not f.model_dtype.startswith("float"):
                    values = np.abs(values)
                row[f.name] = values.astype(f.model_dtype)
            elif f.dtype == "float32":
                values = rng.normal(size=f.size).astype(np.float32)
                if f.model_dtype and (f.model_dtype.startswith("int") or f.model_dtype.startswith("uint")):
                    values = np.round(np.abs(values) * 3)
                row[f.name] = values.tolist()
            elif f.dtype == "int64":
                # 0 and 1 only: valid for bools, embeddings and lookups of any size
                row[f.name] = rng.integers(0, 2, size=f.size).tolist()
            else:
                row[f.name] = [f"{f.name}-{i}-{j}".encode() for j in range(f.size)]
        rows.append(row)
    return rows


def golden_records(spec: Sequence[Feature], count: int) -> List[bytes]:
    """count golden examples of the spec, serialized: what a launch or load check feeds a model."""
    return [make_example(values, spec).SerializeToString() for values in golden_values(spec, count)]


_PLAIN_WORDS = ("the", "model", "reads", "raw", "text", "and", "images", "inside", "its", "graph")


def golden_image(p, i: int, rng) -> bytes:
    """Encoded bytes of a random image: PNG on even i (and for 4 channels), else JPEG; the model's
    size every third image, otherwise larger or smaller."""
    import tensorflow as tf

    sizes = [(p.height, p.width), (2 * p.height + 1, p.width + 3),
             (max(1, p.height // 2), max(1, p.width // 2) + 1)]
    height, width = sizes[i % 3]
    pixels = rng.integers(0, 256, size=(height, width, p.channels), dtype=np.uint8)
    if i % 2 == 0 or p.channels == 4:
        return tf.io.encode_png(pixels).numpy()
    return tf.io.encode_jpeg(pixels).numpy()


def golden_text(words: Optional[Sequence[str]], length: int, i: int, rng) -> str:
    """i % (length + 4) words (none up to more than length): vocabulary words, some capitalised,
    and one word in four outside the vocabulary."""
    known = list(words or _PLAIN_WORDS)
    chosen = []
    for j in range(i % (length + 4)):
        if j % 4 == 3:
            chosen.append(f"unseen{i}x{j}")
            continue
        word = known[int(rng.integers(0, len(known)))]
        chosen.append(word.upper() if j % 3 == 1 else word.capitalize() if j % 3 == 2 else word)
    return ("  " if i % 2 else " ").join(chosen)


def dense_batch(rows: Sequence[Mapping[str, Any]], spec: Sequence[Feature]) -> Dict[str, np.ndarray]:
    """Stacks per-record values into the model's dense inputs (shape [batch, *feature.shape])."""
    batch = {}
    for f in spec:
        values = [row.get(f.name, f.default) for row in rows]
        if f.encoding == RAW:
            batch[f.name] = np.stack([
                np.frombuffer(v, f.model_dtype).reshape(f.shape) if isinstance(v, bytes)
                else np.asarray(v, f.model_dtype).reshape(f.shape) for v in values])
            continue
        dtype = object if f.input_dtype == "string" else f.input_dtype
        batch[f.name] = np.asarray(
            [flatten_default(v) for v in values], dtype=dtype).reshape((len(rows),) + f.shape)
    return batch


def parse_features(spec: FeatureSpec) -> Dict[str, object]:
    """The parse config of a spec: FixedLenFeature per feature, VarLenFeature for varlen ones
    (the parse the serving signatures models.prepare writes run)."""
    import tensorflow as tf

    features = {}
    for f in spec:
        dtype = tf.string if f.dtype == "string" else tf.as_dtype(f.dtype)
        features[f.name] = tf.io.VarLenFeature(dtype) if f.varlen else \
            tf.io.FixedLenFeature(list(f.stored_shape), dtype, default_value=f.default)
    return features


def parse_error(serialized: bytes, spec: FeatureSpec) -> Optional[str]:
    """TensorFlow's own verdict on one record: its parse error message, or None when it parses.

    Python's protobuf is more lenient than TensorFlow's Example parser on some malformed bytes
    (unknown fields, group wire types); when the model fails on a record that passed
    validate_example, this tells a decode failure from a model failure.
    """
    import tensorflow as tf

    try:
        tf.io.parse_example(tf.constant([serialized]), parse_features(spec))
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError, ValueError) as e:
        return " ".join(getattr(e, "message", str(e)).split())
    return None
