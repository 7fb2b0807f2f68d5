"""The launch sample: the first records go through the job's own checks, and a job none of whose
sampled records would be scored is refused before it starts."""

import json

import pytest

from models.examples import make_example
from models.feature_spec import Feature
from pipelines import batch_infer
from pipelines.input_sample import nothing_would_score, record_problem, sample_problems
from tests.test_batch_infer import penguin_values
from transforms.sources.text import InstanceOptions

SPEC = (Feature("measurements", "float32", (4,)), Feature("island", "int64", ()))


def record(**values):
    return make_example(values).SerializeToString()


@pytest.mark.parametrize("data, key, expected", [
    (record(id="a", measurements=[1.0, 2.0, 3.0, 4.0], island=1), "id", None),
    (record(id="a", measurements=[1.0, 2.0, 3.0, 4.0], island=1), None, None),
    (record(id="a", measurements=[1.0, 2.0, 3.0, 4.0], island=1), "idd",
     "key feature 'idd' is missing (the records hold ['id', 'island', 'measurements']); did you mean --key_feature id?"),
    (record(id="a", measurements=[1.0, 2.0, 3.0, 4.0], island=1), "zzz",
     "key feature 'zzz' is missing (the records hold ['id', 'island', 'measurements'])"),
    (record(id=["a", "b"], measurements=[1.0, 2.0, 3.0, 4.0], island=1), "id",
     "validate: key feature 'id' has 2 values, expected 1"),
    (record(id="a", measurements=[1.0, 2.0, 3.0], island=1), "id",
     "validate: feature 'measurements' has 3 values, shape [4] needs 4"),
    (record(id="a", island=1), "id", "validate: missing required feature 'measurements'"),
    (b"\xff\x01not a proto", None, "decode: not a serialized tf.Example"),
])
def test_record_problem(data, key, expected):
    problem = record_problem(data, SPEC, key)
    assert problem == expected if expected is None or not expected.startswith("decode") \
        else problem.startswith(expected)


def test_a_sample_with_one_good_record_launches_and_an_all_bad_one_names_the_common_problem():
    assert nothing_would_score(0, []) is None  # nothing sampled (empty files): the job decides
    assert nothing_would_score(3, [("f", "x"), ("f", "x")]) is None
    message = nothing_would_score(3, [("f", "x"), ("g", "x"), ("g", "y")])
    assert message.startswith("none of the 3 records sampled from the start of the inputs would be scored (f, g): x (2 of them; others fail too).")
    assert "--max_dead_letter_fraction 1" in message


def test_text_inputs_are_sampled_through_the_same_conversion(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in penguin_values(30)))
    options = InstanceOptions(SPEC, "idd")
    sampled, problems = sample_problems([str(path)], "jsonl", SPEC, None, options)
    assert sampled == 20 and len(problems) == 20
    assert "key field 'idd' is missing" in problems[0][1]
    sampled, problems = sample_problems([str(path)], "jsonl", SPEC, None, InstanceOptions(SPEC, "id"))
    assert (sampled, problems) == (20, [])


def test_the_sample_skips_unreadable_regions_and_reads_on_into_the_next_files(write_tfrecords):
    good = [record(id=f"k{i}", measurements=[1.0, 2.0, 3.0, 4.0], island=1) for i in range(5)]
    first = write_tfrecords("a.tfrecord", good[:2], tail=b"\x07" * 30)
    second = write_tfrecords("b.tfrecord", good[2:])
    sampled, problems = sample_problems([first, second], "tfrecord", SPEC, "id")
    assert (sampled, problems) == (5, [])


def test_the_launcher_refuses_a_wrong_input_format_and_accepts_it_with_the_budget_off(
        penguin_model, write_tfrecords, tmp_path, capsys):
    path = write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in penguin_values(30)])
    args = ["--input", path, "--model", penguin_model[0], "--output", str(tmp_path / "pred"),
            "--input_format", "csv"]
    assert batch_infer.main(args) == 2
    assert "none of the 1 record sampled from the start of the inputs would be scored" in capsys.readouterr().err
    assert batch_infer.main(args + ["--max_dead_letter_fraction", "1"]) == 0
