"""Pure tests of rows (JSON values), PredictionLog decoding and dead-letter rows."""

import base64
import hashlib
import json

import numpy as np
import pytest

from transforms.records.dead_letters import FIELDS, MAX_MESSAGE_CHARS, STAGES, dead_letter
from transforms.records.rows import outputs_to_json, to_json_value


def strict_json(value):
    """json.dumps that refuses NaN/inf, round-tripped: what a JSON sink / BigQuery would store."""
    return json.loads(json.dumps(value, allow_nan=False))


# --- to_json_value ---------------------------------------------------------------------------


def shortest(value):
    """The shortest decimal that reads back as the same narrow float (numpy's own repr of it)."""
    return float(str(value))


def assert_narrow_floats(out, array):
    """out holds Python floats, each the shortest decimal of the matching float32/float16 value."""
    assert np.shape(out) == array.shape
    flat_out = np.asarray(out, dtype=object).reshape(-1).tolist()
    flat_in = array.reshape(-1)
    assert all(type(v) is float for v in flat_out)
    assert flat_out == [shortest(v) for v in flat_in]
    np.testing.assert_array_equal(np.asarray(out, dtype=array.dtype), array)  # reads back exactly


def test_float32_scalar_is_the_shortest_decimal_that_reads_back():
    for value in (np.float32(0.1), np.float32(0.6369617), np.float32(-2.75), np.float32(3.4e38),
                  np.float32(1e-40)):  # 1e-40: subnormal
        out = to_json_value(value)
        assert type(out) is float
        assert out == shortest(value)
        assert np.float32(out) == value
        assert strict_json(out) == out
    assert to_json_value(np.float32(0.1)) == 0.1  # not 0.10000000149011612
    assert to_json_value(np.float32(0.6369617)) == 0.6369617


def test_float32_zero_d_array_is_a_scalar():
    out = to_json_value(np.array(0.1, dtype=np.float32))
    assert out == 0.1 and type(out) is float


def test_float32_vector_and_matrix():
    vector = np.array([0.1, 1 / 3, -2.75, 1e-8, 0.6369617], dtype=np.float32)
    out = to_json_value(vector)
    assert isinstance(out, list)
    assert_narrow_floats(out, vector)
    assert out[0] == 0.1

    matrix = np.arange(6, dtype=np.float32).reshape(2, 3) / np.float32(7)
    out = to_json_value(matrix)
    assert len(out) == 2 and all(isinstance(row, list) and len(row) == 3 for row in out)
    assert_narrow_floats(out, matrix)
    assert strict_json(out) == out

    # a non-contiguous view converts the same as its copy
    assert to_json_value(matrix.T) == to_json_value(np.ascontiguousarray(matrix.T))


def test_float16_and_float64():
    # float16: each value reads back as the same float16 (digits may be float32's shortest)
    half = np.array([0.1, 1.5, -3.0], dtype=np.float16)
    out = to_json_value(half)
    assert all(type(v) is float for v in out)
    np.testing.assert_array_equal(np.asarray(out, dtype=np.float16), half)
    assert out[1:] == [1.5, -3.0]
    assert np.float16(to_json_value(np.float16(0.1))) == np.float16(0.1)
    # float64 stays exactly as it is
    doubles = np.array([0.1, 1 / 3, 1e-300], dtype=np.float64)
    assert to_json_value(doubles) == [0.1, 1 / 3, 1e-300]
    assert to_json_value(np.float64(1 / 3)) == 1 / 3
    assert to_json_value(1 / 3) == 1 / 3


def test_int64_values():
    assert to_json_value(np.int64(7)) == 7 and type(to_json_value(np.int64(7))) is int
    big = np.int64(2**62 + 1)  # not representable as a float64: must stay an exact int
    assert to_json_value(big) == 2**62 + 1
    out = to_json_value(np.array([[1, -2], [3, 2**40]], dtype=np.int64))
    assert out == [[1, -2], [3, 2**40]]
    assert all(type(v) is int for row in out for v in row)
    assert strict_json(out) == out


def test_bool_values_stay_bools():
    assert to_json_value(np.bool_(True)) is True
    assert to_json_value(True) is True
    out = to_json_value(np.array([True, False]))
    assert out == [True, False] and all(type(v) is bool for v in out)
    assert json.dumps(out, allow_nan=False) == "[true, false]"


def test_utf8_bytes_become_text():
    assert to_json_value(b"adelie") == "adelie"
    assert to_json_value(np.bytes_(b"gentoo")) == "gentoo"
    assert to_json_value("caf\u00e9".encode("utf-8")) == "caf\u00e9"
    assert to_json_value(np.array([b"a", b"bc"], dtype=object)) == ["a", "bc"]


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b"\x80", bytes(range(256))])
def test_non_utf8_bytes_become_base64(raw):
    out = to_json_value(raw)
    assert set(out) == {"b64"}
    assert base64.b64decode(out["b64"]) == raw
    assert strict_json(out) == out
    # the same inside an array of byte strings
    out = to_json_value(np.array([b"ok", raw], dtype=object))
    assert out[0] == "ok" and base64.b64decode(out[1]["b64"]) == raw


@pytest.mark.parametrize("value,expected", [
    (float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity"),
    (np.float32("nan"), "NaN"), (np.float32("inf"), "Infinity"), (np.float32("-inf"), "-Infinity"),
    (np.float64("-inf"), "-Infinity"),
])
def test_non_finite_scalars_become_strings(value, expected):
    assert to_json_value(value) == expected


def test_non_finite_values_inside_arrays():
    vector = np.array([1.5, np.nan, np.inf, -np.inf], dtype=np.float32)
    assert to_json_value(vector) == [1.5, "NaN", "Infinity", "-Infinity"]

    matrix = np.array([[0.25, np.nan], [-np.inf, 3.0]], dtype=np.float32)
    assert to_json_value(matrix) == [[0.25, "NaN"], ["-Infinity", 3.0]]

    nested_list = [np.float32(np.inf), [float("nan"), 1.0]]
    assert to_json_value(nested_list) == ["Infinity", ["NaN", 1.0]]

    # finite values next to non-finite ones convert as they would on their own
    mixed = np.array([0.1, np.nan, 0.6369617], dtype=np.float32)
    assert to_json_value(mixed) == [0.1, "NaN", 0.6369617]


def test_non_finite_zero_d_array_becomes_a_string():
    assert to_json_value(np.array(np.nan, dtype=np.float32)) == "NaN"


def test_every_value_passes_strict_json():
    outputs = {
        "probs": np.array([0.2, np.nan, np.inf], dtype=np.float32),
        "logits": np.array([[1.0, -np.inf], [np.nan, 2.0]], dtype=np.float32),
        "score": np.float32(np.nan),
        "count": np.int64(3),
        "flag": np.bool_(False),
        "label": np.array([b"adelie", b"\xff"], dtype=object),
        "raw": b"\x00\xff",
    }
    out = outputs_to_json(outputs)
    assert list(out) == sorted(outputs)
    text = json.dumps(out, allow_nan=False)  # raises ValueError on a bare NaN/inf
    assert json.loads(text) == out
    assert out["score"] == "NaN" and out["count"] == 3 and out["flag"] is False
    assert outputs_to_json(outputs, keep=["count", "flag"]) == {"count": 3, "flag": False}


# --- outputs_from_log ------------------------------------------------------------------------


def _predict_log(outputs):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    response = predict_pb2.PredictResponse()
    for name, (value, dtype) in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(response=response))


def test_outputs_from_predict_log_drops_the_batch_axis():
    import tensorflow as tf
    from models.serving.prediction_log import outputs_from_log

    log = _predict_log({
        "probs": (np.array([[0.1, 0.2, 0.7]], dtype=np.float32), tf.float32),
        "class_id": (np.array([2], dtype=np.int64), tf.int64),
    })
    outputs = outputs_from_log(log)
    assert set(outputs) == {"probs", "class_id"}
    assert np.shape(outputs["probs"]) == (3,)
    assert outputs["probs"].dtype == np.float32
    np.testing.assert_array_equal(outputs["probs"], np.array([0.1, 0.2, 0.7], dtype=np.float32))
    assert np.shape(outputs["class_id"]) == ()
    assert outputs["class_id"] == 2 and outputs["class_id"].dtype == np.int64

    row = outputs_to_json(outputs)
    assert row == {"class_id": 2, "probs": [0.1, 0.2, 0.7]}
    assert strict_json(row) == row


def test_outputs_from_predict_log_with_string_output():
    import tensorflow as tf
    from models.serving.prediction_log import outputs_from_log

    outputs = outputs_from_log(_predict_log({"label": (np.array([[b"adelie", b"\xff"]], dtype=object), tf.string)}))
    assert np.shape(outputs["label"]) == (2,)
    assert to_json_value(outputs["label"]) == ["adelie", {"b64": base64.b64encode(b"\xff").decode()}]


def test_outputs_from_classify_log():
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2
    from models.serving.prediction_log import outputs_from_log

    result = classification_pb2.ClassificationResult(classifications=[classification_pb2.Classifications(
        classes=[classification_pb2.Class(label="adelie", score=0.25),
                 classification_pb2.Class(label="gentoo", score=0.75)])])
    log = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(
        response=classification_pb2.ClassificationResponse(result=result)))
    outputs = outputs_from_log(log)
    assert set(outputs) == {"classes", "scores"}
    assert outputs["classes"].tolist() == [b"adelie", b"gentoo"]
    assert outputs["scores"].dtype == np.float32
    np.testing.assert_array_equal(outputs["scores"], np.array([0.25, 0.75], dtype=np.float32))
    assert outputs_to_json(outputs) == {"classes": ["adelie", "gentoo"], "scores": [0.25, 0.75]}


def test_outputs_from_regress_log():
    from tensorflow_serving.apis import prediction_log_pb2, regression_pb2
    from models.serving.prediction_log import outputs_from_log

    result = regression_pb2.RegressionResult(regressions=[regression_pb2.Regression(value=1.5)])
    log = prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(
        response=regression_pb2.RegressionResponse(result=result)))
    outputs = outputs_from_log(log)
    assert list(outputs) == ["outputs"]
    assert outputs["outputs"] == np.float32(1.5) and np.shape(outputs["outputs"]) == ()
    assert outputs_to_json(outputs) == {"outputs": 1.5}


def test_unsupported_or_empty_log_raises():
    from tensorflow_serving.apis import prediction_log_pb2
    from models.serving.prediction_log import UnsupportedLogError, outputs_from_log

    with pytest.raises(UnsupportedLogError, match="None"):
        outputs_from_log(prediction_log_pb2.PredictionLog())
    log = prediction_log_pb2.PredictionLog(multi_inference_log=prediction_log_pb2.MultiInferenceLog())
    with pytest.raises(UnsupportedLogError, match="multi_inference_log"):
        outputs_from_log(log)
    assert issubclass(UnsupportedLogError, ValueError)


# --- dead_letter -----------------------------------------------------------------------------


def test_dead_letter_from_exception():
    row = dead_letter("decode", ValueError("bad bytes"), key="f:1", raw=b"\x00\xffraw",
                      source={"file": "f", "offset": 16})
    assert row == {
        "key": "f:1", "stage": "decode", "error_type": "ValueError", "error": "bad bytes",
        "input_base64": base64.b64encode(b"\x00\xffraw").decode("ascii"),
        "input_size": len(b"\x00\xffraw"), "input_sha256": hashlib.sha256(b"\x00\xffraw").hexdigest(),
        "source": {"file": "f", "offset": 16}, "model": None,
    }
    assert list(row) == list(FIELDS)  # one shape, one order, on every path
    assert base64.b64decode(row["input_base64"]) == b"\x00\xffraw"
    assert strict_json(row) == row


def test_dead_letter_from_message_and_overrides():
    row = dead_letter("infer", "model blew up", model="penguins", error_type="InvalidArgumentError")
    assert row["error_type"] == "InvalidArgumentError" and row["error"] == "model blew up"
    assert row["model"] == "penguins"
    assert row["key"] is None and row["input_base64"] is None
    assert row["source"] is None

    plain = dead_letter("read", "file went away")
    assert plain["error_type"] == "Error"
    assert plain["model"] is None and plain["source"] is None and list(plain) == list(FIELDS)

    class CustomError(Exception):
        pass

    assert dead_letter("write", CustomError("x"))["error_type"] == "CustomError"
    assert dead_letter("write", CustomError("x"), error_type="Override")["error_type"] == "Override"
    assert dead_letter("read", "x", raw=b"")["input_base64"] == ""  # empty record is not "no record"


def test_dead_letter_stage_is_validated():
    for stage in STAGES:
        assert dead_letter(stage, "x")["stage"] == stage
    with pytest.raises(ValueError, match="stage"):
        dead_letter("parse", "x")
    with pytest.raises(ValueError):
        dead_letter("READ", "x")


def test_dead_letter_message_is_truncated():
    long = "".join(chr(ord("a") + i % 26) for i in range(MAX_MESSAGE_CHARS * 3))
    row = dead_letter("validate", RuntimeError(long))
    assert len(row["error"]) == MAX_MESSAGE_CHARS
    assert row["error"] == long[:MAX_MESSAGE_CHARS]
    exact = "z" * MAX_MESSAGE_CHARS
    assert dead_letter("validate", exact)["error"] == exact
