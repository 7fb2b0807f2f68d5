"""One rule per signature method (models.serving.results), as pure functions: the columns both
engines give, the errors for outputs that break the rules, and the classify/regress logs tfx-bsl
writes, checked against tfx-bsl's own post-processing."""

import numpy as np
import pytest

from models.serving.examples import make_example
from models.serving.methods import CLASSIFY, PREDICT, REGRESS
from models.serving.results import OutputBatchError, classify_log, regress_log

SCORES = np.float32([[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]])


def test_classify_columns_follow_tf_servings_result():
    both = CLASSIFY.columns({"classes": np.asarray([[b"a", b"b"]] * 3, object), "scores": SCORES}, 3)
    assert both["classes"].tolist() == [[b"a", b"b"]] * 3 and both["scores"].tolist() == SCORES.tolist()
    scores_only = CLASSIFY.columns({"scores": SCORES}, 3)
    assert scores_only["classes"].tolist() == [[b"", b""]] * 3  # TF Serving's label when there is none
    classes_only = CLASSIFY.columns({"classes": np.asarray([[b"a", b"b"]] * 3, object)}, 3)
    assert classes_only["scores"].tolist() == [[0.0, 0.0]] * 3


def test_regress_columns_are_one_number_per_record():
    for shape in ((3,), (3, 1)):
        out = REGRESS.columns({"outputs": np.arange(3, dtype=np.float32).reshape(shape)}, 3)
        assert out["outputs"].shape == (3,) and out["outputs"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("method, specs", [
    (CLASSIFY, [("classes", "string", (-1, 3)), ("scores", "float32", (-1, 3))]),
    (CLASSIFY, [("scores", "float32", (-1, 4))]),
    (CLASSIFY, [("classes", "string", (-1, 2)), ("extra", "int64", (-1,))]),
    (REGRESS, [("outputs", "float32", (-1, 1))]),
    (REGRESS, [("outputs", "float32", (-1,))]),
    (PREDICT, [("a", "float32", (-1, 2, 5)), ("b", "string", (-1,))]),
])
def test_output_specs_by_method_are_those_of_the_columns_made(method, specs):
    """What schemas and launch checks read (Method.output_specs) against what the rule makes of
    outputs of those specs (Method.columns), for a batch of 3."""
    outputs = {name: np.zeros((3,) + shape[1:], object if dtype == "string" else dtype)
               for name, dtype, shape in specs}
    columns = method.columns(outputs, 3)
    made = {name: (str(value.dtype) if value.dtype != object else "string", (-1,) + value.shape[1:])
            for name, value in columns.items()}
    assert {name: (dtype, shape) for name, dtype, shape in method.output_specs(specs)} == made


@pytest.mark.parametrize("method, outputs, error, message", [
    (PREDICT, {"y": np.zeros((1, 10, 10, 1))}, OutputBatchError, "the model ignores the batch"),
    (PREDICT, {"y": np.float32(1.0)}, OutputBatchError, "first dimension must be the number of inputs"),
    (CLASSIFY, {"scores": np.zeros((3, 2, 1), np.float32)}, ValueError, "expected [batch, num_classes]"),
    (CLASSIFY, {"scores": np.zeros((1, 2), np.float32)}, OutputBatchError, "ignores the batch"),
    (CLASSIFY, {"scores": np.zeros((3, 2), np.float64)}, ValueError, "expected float32"),
    (CLASSIFY, {"classes": np.asarray([[b"a"]] * 3, object), "scores": SCORES}, ValueError, "number of classes"),
    (CLASSIFY, {"probabilities": SCORES}, ValueError, "needs 'classes' or 'scores'"),
    (REGRESS, {"outputs": np.zeros((3, 2), np.float32)}, ValueError, "expected [batch] or [batch, 1]"),
    (REGRESS, {"value": np.zeros(3, np.float32)}, ValueError, "needs an 'outputs' output"),
])
def test_outputs_that_break_the_rules_say_why(method, outputs, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        method.columns(outputs, 3)


def test_classify_and_regress_logs_are_tfx_bsls():
    from tfx_bsl.beam import run_inference

    records = [make_example({"x": [float(i), 1.0]}).SerializeToString() for i in range(3)]
    classes = np.asarray([[b"neg", b"pos"]] * 3, object)
    reference = run_inference._post_process_classify(  # pylint: disable=protected-access
        {"classes": "c", "scores": "s"}, records, {"classes": classes, "scores": SCORES})
    for record, k, s, expected in zip(records, classes, SCORES, reference):
        log = classify_log(record, k, s)
        assert log.classify_log.response.result.classifications[0] == expected
        assert log.classify_log.request.input.example_list.examples[0].SerializeToString() == record
    values = np.float32([[0.5], [1.5], [-2.0]])
    reference = run_inference._post_process_regress(records, {"outputs": values})  # pylint: disable=protected-access
    for record, value, expected in zip(records, values.reshape(-1), reference):
        assert regress_log(record, value).regress_log.response.result.regressions[0] == expected


def test_each_method_object_carries_the_names_tensorflow_and_tf_serving_use():
    import tensorflow as tf

    from models.serving.methods import method_named, signature_method

    assert [(m.method_name, m.input_key) for m in (PREDICT, CLASSIFY, REGRESS)] == [
        (tf.saved_model.PREDICT_METHOD_NAME, "examples"), (tf.saved_model.CLASSIFY_METHOD_NAME,
                                                           tf.saved_model.CLASSIFY_INPUTS),
        (tf.saved_model.REGRESS_METHOD_NAME, tf.saved_model.REGRESS_INPUTS)]
    assert signature_method(tf.saved_model.CLASSIFY_METHOD_NAME) is CLASSIFY is method_named("classify")
    assert signature_method("") is PREDICT and signature_method("tensorflow/serving/other") is PREDICT
