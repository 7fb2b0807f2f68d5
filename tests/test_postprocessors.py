"""Post-processing as pure functions on columnar outputs, and on the outputs of tfx-bsl PredictionLogs."""

import base64

import numpy as np
import pytest

from models.serving.examples import make_example
from models.serving.prediction_log import predict_log
from transforms.scoring.tfx_bsl_logs import logs_to_rows
from transforms.graph.postprocessors import (CallFunction, Classify, Keep, PostprocessError, Regress, apply_steps,
                                             check_steps,
                                             step_from_config)

PROBS = np.asarray([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4]], np.float32)


def test_classify_multiclass_with_labels_and_top_k():
    out = Classify(output="p", labels=["a", "b", "c"], top_k=2)({"p": PROBS})
    assert out["label"].tolist() == ["b", "a", "c"]
    np.testing.assert_array_equal(out["score"], np.float32([0.7, 0.5, 0.4]))
    assert out["top_labels"].tolist() == [["b", "c"], ["a", "c"], ["c", "a"]]
    np.testing.assert_array_equal(out["top_scores"], np.float32([[0.7, 0.2], [0.5, 0.3], [0.4, 0.3]]))
    np.testing.assert_array_equal(out["p"], PROBS)  # the raw output stays unless a keep drops it


def test_classify_ties_keep_class_order_and_indices_without_labels():
    out = Classify(top_k=3)({"p": np.float32([[0.4, 0.4, 0.2]])})
    assert out["label"].tolist() == [0] and out["top_labels"].tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("scores", [np.float32([0.2, 0.5, 0.9]), np.float32([[0.2], [0.5], [0.9]])])
def test_classify_binary_head_with_threshold(scores):
    out = Classify(labels=["no", "yes"], threshold=0.6)({"s": scores})
    assert out["label"].tolist() == ["no", "no", "yes"]
    np.testing.assert_allclose(out["score"], [0.8, 0.5, 0.9], rtol=1e-6)
    assert Classify(labels=["no", "yes"])({"s": scores})["label"].tolist() == ["no", "yes", "yes"]


def test_classify_labels_from_a_vocabulary_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\ndog\nbird\n")
    assert Classify(labels=str(path))({"p": PROBS})["label"].tolist() == ["dog", "cat", "bird"]


@pytest.mark.parametrize("step, outputs, message", [
    (Classify(labels=["a", "b"]), {"p": PROBS}, "2 labels for 3 classes"),
    (Classify(threshold=0.5), {"p": PROBS}, "threshold applies to a binary head"),
    (Classify(), {"p": PROBS, "q": PROBS}, "name one with 'output'"),
    (Classify(output="x"), {"p": PROBS}, "no output 'x'"),
    (Classify(), {"p": np.int64([1, 2])}, "not scores"),
    (Regress(), {"y": np.zeros((2, 3), np.float32)}, "expected one value"),
    (Keep(["a"]), {"b": np.zeros(1)}, "keep: no output ['a']"),
])
def test_steps_that_cannot_apply_raise_clearly(step, outputs, message):
    with pytest.raises((ValueError, KeyError)) as error:
        step(outputs)
    assert message in str(error.value)


@pytest.mark.parametrize("config, message", [
    ({"classify": {"top_k": 0}}, "top_k must be a positive integer"),
    ({"classify": {"threshold": 2}}, "threshold must be within [0, 1]"),
    ({"classify": {"labels": ["only"]}}, "need at least 2"),
    ({"classify": {"colour": "red"}}, "unexpected keyword argument 'colour'"),
    ({"regress": {"round": "two"}}, "number of decimals"),
    ({"keep": "label"}, "non-empty list"),
    ({"function": "no_colon"}, "is not 'package.module:function'"),
    ({"function": "tests.nowhere:fn"}, "cannot import"),
    ({"classify": {}, "regress": {}}, "is one of"),
])
def test_bad_step_configs_are_refused(config, message):
    with pytest.raises(PostprocessError) as error:
        step_from_config(config)
    assert message in str(error.value)


def test_regress_unwraps_and_rounds():
    out = Regress(output="y", round=2)({"y": np.float32([[1.234], [5.678]]), "z": np.zeros(2)})
    np.testing.assert_allclose(out["y"], [1.23, 5.68], rtol=1e-6)
    assert out["y"].shape == (2,) and "z" in out


def add_one_to_y(outputs, amount=1.0):
    """A user post-processing function (referenced by name in a graph file)."""
    return {**outputs, "y_plus": outputs["y"] + amount}


def test_a_users_function_by_reference_survives_pickling():
    import pickle

    step = step_from_config({"function": {"name": "tests.test_postprocessors:add_one_to_y",
                                          "args": {"amount": 2.0}}})
    step = pickle.loads(pickle.dumps(step))
    out = step({"y": np.float32([1.0, 2.0])})
    np.testing.assert_array_equal(out["y_plus"], [3.0, 4.0])


def test_a_users_function_must_keep_one_value_per_record():
    with pytest.raises(ValueError, match="expected a leading axis of 2"):
        CallFunction(lambda o: {"total": o["y"].sum()})({"y": np.float32([1.0, 2.0])})


def test_steps_apply_in_order_and_keep_selects():
    out = apply_steps([Classify(output="p", labels=["a", "b", "c"]), Keep(["label"])], {"p": PROBS})
    assert list(out) == ["label"] and out["label"].tolist() == ["b", "a", "c"]


def test_tfx_bsl_logs_become_post_processed_rows_and_failures_dead_letters():
    """ToPredictionRows' pure core: keyed predict logs -> the steps -> rows; a log the steps fail
    on is a dead letter (postprocess) naming the model, the others still rows."""
    records = [make_example({"i": i}).SerializeToString() for i in range(3)]
    probabilities = [[0.1, 0.9], [0.8, 0.2], [0.3, 0.3, 0.4]]  # three classes for two labels: a dead letter
    logs = [predict_log(r, {"p": np.float32(p)}, "serving_default") for r, p in zip(records, probabilities)]
    steps = [Classify(output="p", labels=["neg", "pos"]), Keep(["label", "score"])]
    rows, dead = logs_to_rows("clf", ["a", "b", "c"], logs, steps)
    assert rows == [{"key": "a", "clf": {"label": "pos", "score": 0.9}},
                    {"key": "b", "clf": {"label": "neg", "score": 0.8}}]
    assert [(d["key"], d["stage"], d["model"]) for d in dead] == [("c", "postprocess", "clf")]
    assert base64.b64decode(dead[0]["input_base64"]) == logs[2].SerializeToString()


def test_a_step_that_would_overwrite_a_model_output_is_refused_naming_both():
    specs = {"score": ("float32", (3,))}
    with pytest.raises(PostprocessError, match="step 1: classify adds 'score', which would overwrite "
                                               "the model's output 'score'; give the step a prefix"):
        check_steps([Classify(output="score")], specs)
    check_steps([Classify(output="score", prefix="cls_"), Keep(["cls_label", "score"])], specs)


def test_the_checks_agree_with_what_the_steps_do_on_arrays():
    """check() gives the dtypes and per-record shapes that the steps produce on real arrays."""
    probs = np.float32([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    for steps in ([Classify(output="p", labels=["a", "b", "c"], top_k=2)],
                  [Classify(output="p", top_k=3), Keep(["top_scores", "label"])],
                  [Regress(output="one")],
                  [Classify(output="one", threshold=0.3)]):
        outputs = {"p": probs, "one": np.float32([[0.2], [0.9]])}
        specs = {n: (str(v.dtype), v.shape[1:]) for n, v in outputs.items()}
        for step in steps:
            outputs, specs = step(outputs), step.check(specs)
        actual = {n: ("string" if v.dtype == object else str(v.dtype), v.shape[1:]) for n, v in outputs.items()}
        assert actual == specs


def test_a_users_function_ends_the_static_checks():
    steps = [CallFunction(lambda outputs: {"anything": outputs["p"]}), Keep(["anything"])]
    check_steps(steps, {"p": ("float32", (3,))})  # keep names what the function returns: not refused
