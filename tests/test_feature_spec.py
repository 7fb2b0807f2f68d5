"""Unit tests of the feature spec (models.serving.feature_spec) and of the per-record gate
models.serving.examples.validate_example, checked against TensorFlow's own parser.

No model is exported here. The equivalence tests run tf.io.parse_example with the spec's
FixedLenFeatures (models.serving.examples.parse_features, the same parse the serving signature runs) on
each record alone, and require validate_example to raise RecordError exactly when that raises.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2

from models.serving import examples as ex
from models.serving.examples import parse_features
from models.serving.feature_spec import (
    Feature, FeatureSpecError, describe, feature_from_json, load_spec_file, make_spec,
    override_spec, spec_from_json, spec_to_json)

KIND = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}
DTYPES = tuple(KIND)
SHAPES = ((), (1,), (2,), (3,), (2, 2))


# --------------------------------------------------------------------------------------------
# spec JSON
# --------------------------------------------------------------------------------------------

CANONICAL_SPEC = (
    Feature("vec", "float32", (3,)),
    Feature("count", "int64", (), default=4),
    Feature("words", "string", (2,), default=["a", "b"]),
    Feature("grid", "float32", (2, 2), default=[[0.5, 1.0], [1.5, 2.0]]),
    Feature("ids", "int64", (3,), model_dtype="int32"),
    Feature("flag", "int64", (1,), model_dtype="bool", default=[0]),
)


def test_spec_json_round_trip_list_form_through_json_text():
    text = json.dumps(spec_to_json(CANONICAL_SPEC))
    obj = json.loads(text)
    assert list(obj) == ["features"] and isinstance(obj["features"], list)
    assert spec_from_json(obj) == CANONICAL_SPEC
    # a bare list of features is the same spec
    assert spec_from_json(obj["features"]) == CANONICAL_SPEC


def test_spec_json_round_trip_mapping_form():
    listed = spec_to_json(CANONICAL_SPEC)["features"]
    mapping = {f["name"]: {k: v for k, v in f.items() if k != "name"} for f in listed}
    assert spec_from_json(json.loads(json.dumps(mapping))) == CANONICAL_SPEC
    # {"features": {name: {...}}} is accepted as well
    assert spec_from_json({"features": mapping}) == CANONICAL_SPEC


def test_spec_json_omits_model_dtype_equal_to_dtype_and_keeps_input_dtype():
    # A derived spec names model_dtype even when no cast is needed; JSON drops it, and the
    # round trip must keep what matters: storage dtype, shape, default and the model input dtype.
    derived = (Feature("x", "float32", (2,), model_dtype="float32"),
               Feature("n", "int64", (), model_dtype="int64", default=1))
    obj = spec_to_json(derived)
    assert all("model_dtype" not in f for f in obj["features"])
    back = spec_from_json(obj)
    for before, after in zip(derived, back):
        assert (after.name, after.dtype, after.shape, after.input_dtype, after.default) == (
            before.name, before.dtype, before.shape, before.input_dtype, before.default)


def test_model_dtype_given_as_dtype_is_stored_the_tf_example_way():
    spec = spec_from_json([{"name": "ids", "dtype": "int32", "shape": [3]},
                           {"name": "x", "dtype": "float64", "shape": [2]},
                           {"name": "b", "dtype": "bool"}])
    assert [(f.dtype, f.model_dtype, f.input_dtype) for f in spec] == [
        ("int64", "int32", "int32"), ("float32", "float64", "float64"), ("int64", "bool", "bool")]
    assert spec[2].shape == () and spec[2].size == 1


@pytest.mark.parametrize("dtype", ["float64", "text", "int32", ""])
def test_feature_rejects_a_storage_dtype_outside_the_three_kinds(dtype):
    with pytest.raises(FeatureSpecError, match="dtype"):
        Feature("a", dtype, (1,))


@pytest.mark.parametrize("dtype", ["complex64", "text", "float8"])
def test_spec_json_rejects_a_dtype_no_tf_example_can_feed(dtype):
    with pytest.raises(FeatureSpecError, match=dtype):
        spec_from_json([{"name": "a", "dtype": dtype, "shape": [1]}])


@pytest.mark.parametrize("shape", [[None], [-1], [0], [2, None], [1.5], ["3"]])
def test_spec_json_rejects_variable_or_invalid_shapes(shape):
    with pytest.raises(FeatureSpecError, match="shape"):
        spec_from_json([{"name": "a", "dtype": "float32", "shape": shape}])


def test_duplicate_feature_names_are_rejected():
    with pytest.raises(FeatureSpecError, match="duplicate.*'a'"):
        spec_from_json([{"name": "a", "dtype": "float32"}, {"name": "b", "dtype": "int64"},
                        {"name": "a", "dtype": "string"}])
    with pytest.raises(FeatureSpecError, match="duplicate"):
        make_spec([Feature("x", "float32"), Feature("x", "float32")])


@pytest.mark.parametrize("shape,default", [
    ((2,), [1.0]), ((2,), [1.0, 2.0, 3.0]), ((), [1, 2]), ((2, 2), [[1, 2], [3]]), ((3,), 1.0)])
def test_default_of_wrong_length_is_rejected(shape, default):
    with pytest.raises(FeatureSpecError, match="default has"):
        Feature("a", "float32", shape, default=default)
    with pytest.raises(FeatureSpecError, match="default has"):
        spec_from_json([{"name": "a", "dtype": "float32", "shape": list(shape), "default": default}])


def test_defaults_of_the_right_length_are_accepted_nested_or_flat():
    assert Feature("a", "float32", (2, 2), default=[[1, 2], [3, 4]]).size == 4
    assert Feature("a", "float32", (2, 2), default=[1, 2, 3, 4]).required is False
    assert Feature("a", "int64", (), default=0).required is False  # 0 is a default, not "none"
    assert Feature("a", "int64", ()).required is True


@pytest.mark.parametrize("obj,message", [
    ([], "at least one feature"),
    ({"features": []}, "at least one feature"),
    ("vec", "list of features or a mapping"),
    (3, "list of features or a mapping"),
    ([{"dtype": "float32"}], "without a name"),
    ([{"name": "a"}], "dtype is required"),
    ([{"name": "a", "dtype": "float32", "size": 3}], "unknown fields"),
])
def test_malformed_spec_json_is_rejected_with_a_reason(obj, message):
    with pytest.raises(FeatureSpecError, match=message):
        spec_from_json(obj)


def test_load_spec_file_reads_json_and_rejects_invalid_json(tmp_path):
    good = tmp_path / "spec.json"
    good.write_text(json.dumps(spec_to_json(CANONICAL_SPEC)))
    assert load_spec_file(str(good)) == CANONICAL_SPEC
    bad = tmp_path / "bad.json"
    bad.write_text('{"features": [')
    with pytest.raises(FeatureSpecError, match="not valid JSON"):
        load_spec_file(str(bad))


# --------------------------------------------------------------------------------------------
# override_spec
# --------------------------------------------------------------------------------------------

DERIVED = (Feature("x", "float32", (3,), model_dtype="float32"),
           Feature("ids", "int64", (2,), model_dtype="int32"),
           Feature("s", "string", (), model_dtype="string"))


def test_override_replaces_named_features_keeps_order_and_model_dtype():
    merged = override_spec(DERIVED, (Feature("ids", "int64", (2,), default=[0, 1]),))
    assert [f.name for f in merged] == ["x", "ids", "s"]
    assert merged[0] == DERIVED[0] and merged[2] == DERIVED[2]
    assert merged[1].default == [0, 1] and merged[1].model_dtype == "int32"
    assert merged[1].input_dtype == "int32" and not merged[1].required


def test_override_shape_mismatch_is_rejected():
    with pytest.raises(FeatureSpecError, match=r"'x'.*\[4\].*\[3\]"):
        override_spec(DERIVED, (Feature("x", "float32", (4,)),))
    with pytest.raises(FeatureSpecError, match="shape"):
        override_spec(DERIVED, (Feature("s", "string", (1,)),))  # [1] is not []


def test_override_naming_an_unknown_feature_is_rejected():
    with pytest.raises(FeatureSpecError, match=r"\['nope'\].*not model inputs"):
        override_spec(DERIVED, (Feature("nope", "float32", (3,)),))


def test_describe_names_dtype_shape_cast_and_default():
    text = describe(override_spec(DERIVED, (Feature("x", "float32", (3,), default=[0, 0, 0]),)))
    lines = text.splitlines()
    assert lines[0].strip() == "x: float32[3] (default=[0, 0, 0])"
    assert lines[1].strip() == "ids: int64[2] -> int32 (required)"
    assert lines[2].strip() == "s: string[] (required)"


def test_describe_shows_a_varlen_feature_by_its_dtype_alone():
    spec = (Feature("tags", "int64", varlen=True), Feature("w", "float32", (1,), default=[1.0]),
            Feature("id", "string", varlen=True, passthrough=True))
    assert [line.strip() for line in describe(spec).splitlines()] == [
        "tags: int64, variable length", "w: float32[1] (default=[1.0])",
        "id: string, variable length, passed through"]


# --------------------------------------------------------------------------------------------
# validate_example == tf.io.parse_example
# --------------------------------------------------------------------------------------------

def tf_parse_raises(serialized: bytes, spec) -> bool:
    """Whether TensorFlow's parser rejects this one record under the spec.

    Any exception counts: for records holding bytes that are not UTF-8, TF fails to build its own
    InvalidArgumentError message and raises UnicodeDecodeError instead.
    """
    try:
        tf.io.parse_example(tf.constant([serialized]), parse_features(spec))
    except Exception:  # noqa: BLE001 - see docstring
        return True
    return False


def validate_raises(serialized: bytes, spec):
    """The RecordError validate_example raises, or None when it accepts the record."""
    try:
        ex.validate_example(serialized, spec)
    except ex.RecordError as e:
        return e
    return None


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand to build records protobuf would not."""
    length, n = b"", len(payload)
    while True:
        byte, n = n & 0x7F, n >> 7
        length += bytes([byte | 0x80]) if n else bytes([byte])
        if not n:
            break
    return bytes([(field << 3) | 2]) + length + payload


def _feature_bytes(**values) -> bytes:
    """Serialized tensorflow.Feature holding one list, e.g. _feature_bytes(float_list=[1.0])."""
    ((kind, vals),) = values.items()
    feature = feature_pb2.Feature()
    getattr(feature, kind).value.extend(vals)
    return feature.SerializeToString()


def _raw_example(entries, features_extra=b"", top_extra=b"") -> bytes:
    """Example{features{feature: entries}} from (key bytes, Feature bytes, map-entry extra) triples."""
    body = b"".join(_ld(1, _ld(1, key) + _ld(2, value) + extra) for key, value, extra in entries)
    return _ld(1, body + features_extra) + top_extra


def _example(**features) -> bytes:
    """Example with features given as name=(kind, values) or name=None (feature with no list set)."""
    example = example_pb2.Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if value is None:
            feature.Clear()
            continue
        kind, values = value
        getattr(feature, kind).SetInParent()  # an empty list is still a list of that kind
        getattr(feature, kind).value.extend(values)
    return example.SerializeToString(deterministic=True)


SPEC_REQUIRED = (Feature("x", "float32", (2,)), Feature("n", "int64", ()),
                 Feature("s", "string", (1,)))
SPEC_DEFAULTS = (Feature("x", "float32", (2,), default=[0.5, -0.5]),
                 Feature("n", "int64", (), default=7),
                 Feature("s", "string", (1,), default=["z"]))
GOOD = dict(x=("float_list", [1.0, 2.0]), n=("int64_list", [3]), s=("bytes_list", [b"w"]))


def _with(**changes):
    values = dict(GOOD, **changes)
    return _example(**{k: v for k, v in values.items() if v != "drop"})


# (id, spec, serialized, expected stage or None when both must accept)
HAND_CASES = [
    ("correct", SPEC_REQUIRED, _with(), None),
    ("correct-with-defaults-spec", SPEC_DEFAULTS, _with(), None),
    ("made-by-make_example", SPEC_REQUIRED,
     ex.make_example({"x": [1, 2], "n": 3, "s": "w"}, SPEC_REQUIRED).SerializeToString(), None),
    ("missing-required", SPEC_REQUIRED, _with(n="drop"), "validate"),
    ("missing-all-required", SPEC_REQUIRED, _example(), "validate"),
    ("missing-with-default", SPEC_DEFAULTS, _with(n="drop"), None),
    ("all-missing-all-defaults", SPEC_DEFAULTS, _example(), None),
    ("empty-record-all-defaults", SPEC_DEFAULTS, b"", None),
    ("empty-record-required", SPEC_REQUIRED, b"", "validate"),
    ("wrong-kind-int-for-float", SPEC_REQUIRED, _with(x=("int64_list", [1, 2])), "validate"),
    ("wrong-kind-float-for-int", SPEC_REQUIRED, _with(n=("float_list", [3.0])), "validate"),
    ("wrong-kind-bytes-for-float", SPEC_REQUIRED, _with(x=("bytes_list", [b"1", b"2"])), "validate"),
    ("wrong-kind-with-default", SPEC_DEFAULTS, _with(s=("int64_list", [1])), "validate"),
    ("wrong-kind-empty-list", SPEC_REQUIRED, _with(x=("int64_list", [])), "validate"),
    ("wrong-kind-empty-list-with-default", SPEC_DEFAULTS, _with(x=("int64_list", [])), "validate"),
    ("too-short", SPEC_REQUIRED, _with(x=("float_list", [1.0])), "validate"),
    ("too-long", SPEC_REQUIRED, _with(x=("float_list", [1.0, 2.0, 3.0])), "validate"),
    ("scalar-given-two", SPEC_REQUIRED, _with(n=("int64_list", [1, 2])), "validate"),
    ("wrong-length-with-default", SPEC_DEFAULTS, _with(x=("float_list", [1.0, 2.0, 3.0])), "validate"),
    ("empty-list-required", SPEC_REQUIRED, _with(x=("float_list", [])), "validate"),
    ("no-list-set-required", SPEC_REQUIRED, _with(x=None), "validate"),
    ("no-list-set-with-default", SPEC_DEFAULTS, _with(x=None, s=None), None),
    ("extra-unknown-features", SPEC_REQUIRED,
     _with(extra=("int64_list", [1, 2, 3]), other=("bytes_list", []), third=None), None),
    ("extra-unknown-feature-named-like-a-prefix", SPEC_REQUIRED, _with(xx=("bytes_list", [b"a"])), None),
    ("garbage-bytes", SPEC_REQUIRED, b"\x0a\xff\xff not a tf.Example", "decode"),
    ("garbage-ff", SPEC_REQUIRED, b"\xff" * 7, "decode"),
    ("truncated", SPEC_REQUIRED, _with()[:-3], "decode"),
    ("unknown-top-level-field", SPEC_REQUIRED, _with() + b"\x10\x01", None),
    ("unknown-field-inside-feature", SPEC_REQUIRED,
     _raw_example([(b"x", _feature_bytes(float_list=[1.0, 2.0]) + b"\x20\x01", b""),
                   (b"n", _feature_bytes(int64_list=[3]), b""),
                   (b"s", _feature_bytes(bytes_list=[b"w"]), b"")]), None),
    ("duplicate-key-last-wins-valid", SPEC_REQUIRED,
     _raw_example([(b"x", _feature_bytes(float_list=[1.0]), b""),
                   (b"x", _feature_bytes(float_list=[1.0, 2.0]), b""),
                   (b"n", _feature_bytes(int64_list=[3]), b""),
                   (b"s", _feature_bytes(bytes_list=[b"w"]), b"")]), None),
    ("duplicate-key-last-wins-invalid", SPEC_REQUIRED,
     _raw_example([(b"x", _feature_bytes(float_list=[1.0, 2.0]), b""),
                   (b"x", _feature_bytes(float_list=[1.0]), b""),
                   (b"n", _feature_bytes(int64_list=[3]), b""),
                   (b"s", _feature_bytes(bytes_list=[b"w"]), b"")]), "validate"),
]


@pytest.mark.parametrize("spec,serialized,stage", [c[1:] for c in HAND_CASES],
                         ids=[c[0] for c in HAND_CASES])
def test_validate_example_agrees_with_tf_parse_example(spec, serialized, stage):
    error = validate_raises(serialized, spec)
    assert (error is not None) == tf_parse_raises(serialized, spec)
    if stage is None:
        assert error is None
    else:
        assert error is not None and error.stage == stage


def test_validate_example_reports_every_problem_in_one_message():
    error = validate_raises(_with(x=("int64_list", [1, 2]), n="drop", s=("bytes_list", [b"a", b"b"])),
                            SPEC_REQUIRED)
    assert error is not None and error.stage == "validate"
    message = str(error)
    assert "feature 'x' is int64, expected float" in message
    assert "missing required feature 'n'" in message
    assert "feature 's' has 2 values, shape [1] needs 1" in message


# An empty list of the right kind is not "absent": TensorFlow rejects it even with a default,
# and so does validate_example.
EMPTY_LIST_CASES = [
    ("empty-float-list-with-default", SPEC_DEFAULTS, _with(x=("float_list", []))),
    ("empty-int64-list-with-default", SPEC_DEFAULTS, _with(n=("int64_list", []))),
    ("empty-bytes-list-with-default", SPEC_DEFAULTS, _with(s=("bytes_list", []))),
    ("make_example-of-empty-value-with-default", SPEC_DEFAULTS,
     ex.make_example({"x": [], "n": 1, "s": "a"}, SPEC_DEFAULTS).SerializeToString()),
]


@pytest.mark.parametrize("spec,serialized", [c[1:] for c in EMPTY_LIST_CASES],
                         ids=[c[0] for c in EMPTY_LIST_CASES])
def test_empty_lists_are_rejected_like_tensorflow_does(spec, serialized):
    error = validate_raises(serialized, spec)
    assert error is not None and error.stage == "validate"
    assert tf_parse_raises(serialized, spec)


# Python's protobuf accepts (or silently drops) some malformed bytes that TensorFlow's Example
# parser rejects. validate_example lets them through; when the model then fails on such a record,
# model_failure_dead_letter asks TensorFlow's parser and files it under decode, not infer.
LENIENT_PROTO_CASES = [
    ("unknown-field-inside-features", SPEC_REQUIRED,
     _raw_example([(b"x", _feature_bytes(float_list=[1.0, 2.0]), b""),
                   (b"n", _feature_bytes(int64_list=[3]), b""),
                   (b"s", _feature_bytes(bytes_list=[b"w"]), b"")], features_extra=b"\x10\x01")),
    ("group-wire-type-after-example", SPEC_REQUIRED, _with() + b"\x1b\x1c"),
    ("unknown-field-in-map-entry-of-defaulted-feature", SPEC_DEFAULTS,
     _raw_example([(b"x", _feature_bytes(float_list=[1.0, 2.0]), b"\x18\x01")])),
]


@pytest.mark.parametrize("spec,serialized", [c[1:] for c in LENIENT_PROTO_CASES],
                         ids=[c[0] for c in LENIENT_PROTO_CASES])
def test_bytes_only_tensorflow_rejects_become_decode_dead_letters(spec, serialized):
    from transforms.records.dead_letters import model_failure_dead_letter

    assert validate_raises(serialized, spec) is None  # the lenient first gate
    assert tf_parse_raises(serialized, spec)
    row = model_failure_dead_letter(RuntimeError("model failed"), "k", serialized, spec, "m")
    assert row["stage"] == "decode" and "TensorFlow can parse" in row["error"]
    good = ex.make_example({"x": [1.0, 2.0], "n": 3, "s": "w"}, spec).SerializeToString()
    assert model_failure_dead_letter(RuntimeError("model failed"), "k", good, spec, "m")["stage"] == "infer"


# Where validate_example is stricter than TensorFlow (protobuf rejects bytes TF's parser reads,
# filling defaults): a record Python cannot parse cannot be keyed or echoed, so it is a dead letter.
STRICTER_CASES = [
    ("non-utf8-key-of-extra-feature", SPEC_REQUIRED,
     _raw_example([(b"x", _feature_bytes(float_list=[1.0, 2.0]), b""),
                   (b"n", _feature_bytes(int64_list=[3]), b""),
                   (b"s", _feature_bytes(bytes_list=[b"w"]), b""),
                   (b"\xfe0", _feature_bytes(int64_list=[1]), b"")])),
    ("truncated-record-all-defaults", SPEC_DEFAULTS, b'\n"'),
]


@pytest.mark.parametrize("spec,serialized", [c[1:] for c in STRICTER_CASES], ids=[c[0] for c in STRICTER_CASES])
def test_validate_example_is_deliberately_stricter_here(spec, serialized):
    error = validate_raises(serialized, spec)
    assert error is not None and error.stage == "decode"
    assert not tf_parse_raises(serialized, spec)


def _random_values(rng, dtype, count):
    if dtype == "float32":
        return rng.normal(size=count).astype(np.float32).tolist()
    if dtype == "int64":
        return rng.integers(-1000, 1000, size=count).tolist()
    return [rng.bytes(int(rng.integers(0, 6))) for _ in range(count)]


def _random_spec(rng):
    features = []
    for i in range(int(rng.integers(1, 4))):
        dtype = DTYPES[rng.integers(len(DTYPES))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        default = None
        if rng.random() < 0.4:
            values = _random_values(rng, dtype, int(np.prod(shape)))
            default = [v.hex() if isinstance(v, bytes) else v for v in values]
            default = default[0] if shape == () else default
        features.append(Feature(f"f{i}", dtype, shape, default=default))
    return make_spec(features)


MODES = ("ok", "ok", "missing", "wrong_kind", "wrong_length", "no_list", "empty_list")


def _random_record(rng, spec):
    """A record that exercises one mode per feature; returns (bytes, modes)."""
    example = example_pb2.Example()
    modes = []
    for f in spec:
        mode = MODES[rng.integers(len(MODES))]
        if mode == "empty_list" and not f.required:
            mode = "no_list"  # empty typed list + default: the known bug, covered above
        modes.append(mode)
        if mode == "missing":
            continue
        feature = example.features.feature[f.name]
        if mode == "no_list":
            feature.Clear()
            continue
        kind, count = KIND[f.dtype], f.size
        if mode == "wrong_kind":
            kind = [k for d, k in KIND.items() if d != f.dtype][rng.integers(2)]
            count = int(rng.integers(0, f.size + 2))
        elif mode == "wrong_length":
            count = int(rng.choice([n for n in range(1, f.size + 3) if n != f.size]))
        elif mode == "empty_list":
            count = 0
        dtype = {v: k for k, v in KIND.items()}[kind]
        getattr(feature, kind).SetInParent()
        getattr(feature, kind).value.extend(_random_values(rng, dtype, count))
    for j in range(int(rng.integers(0, 3))):  # unknown extra features of any kind and length
        dtype = DTYPES[rng.integers(len(DTYPES))]
        extra = example.features.feature[f"extra{j}"]
        getattr(extra, KIND[dtype]).SetInParent()
        getattr(extra, KIND[dtype]).value.extend(_random_values(rng, dtype, int(rng.integers(0, 4))))
    return example.SerializeToString(deterministic=True), modes


def test_validate_example_agrees_with_tf_parse_example_on_random_records():
    rng = np.random.default_rng(20240611)
    outcomes = {"accepted": 0, "validate": 0, "decode": 0}
    disagreements = []
    for i in range(500):
        spec = _random_spec(rng)
        if i % 10 == 9 and any(f.required for f in spec):
            # garbage: random bytes. Only against a spec with a required feature: with defaults
            # for everything TF accepts much garbage that protobuf rejects (STRICTER_CASES).
            serialized, modes = rng.bytes(int(rng.integers(0, 40))), ["garbage"]
        else:
            serialized, modes = _random_record(rng, spec)
        error = validate_raises(serialized, spec)
        outcomes["accepted" if error is None else error.stage] += 1
        if (error is not None) != tf_parse_raises(serialized, spec):
            disagreements.append((spec, modes, serialized, error))
    assert not disagreements, disagreements[:3]
    # the generator really produced both kinds of record, and garbage
    assert outcomes["accepted"] > 50 and outcomes["validate"] > 50 and outcomes["decode"] > 5, outcomes


def test_under_byte_corruption_every_record_is_caught_by_one_of_the_two_gates():
    # Flip one byte of valid records: whatever TensorFlow's parser rejects is rejected by
    # validate_example or, if protobuf let it through, filed under decode by the model-failure path.
    from transforms.records.dead_letters import model_failure_dead_letter

    rng = np.random.default_rng(7)
    lenient = 0
    for _ in range(400):
        spec = _random_spec(rng)
        example = ex.make_example(
            {f.name: _random_values(rng, f.dtype, f.size) for f in spec}, spec)
        example.features.feature["extra"].int64_list.value.append(1)
        data = bytearray(example.SerializeToString(deterministic=True))
        data[rng.integers(len(data))] = int(rng.integers(256))
        if validate_raises(bytes(data), spec) is None and tf_parse_raises(bytes(data), spec):
            lenient += 1
            row = model_failure_dead_letter(RuntimeError("x"), "k", bytes(data), spec, "m")
            assert row["stage"] == "decode", (spec, bytes(data))
    assert lenient > 0  # the corruption really produced records only TensorFlow rejects


def test_feature_from_json_uses_the_mapping_key_as_name():
    assert feature_from_json("k", {"dtype": "string", "shape": [2]}) == Feature("k", "string", (2,))
    # an explicit name inside wins over the key
    assert feature_from_json("k", {"name": "j", "dtype": "int64"}).name == "j"
