"""A job that scored nothing, or almost nothing, fails: exit 1 and a manifest that says so, with
the counts (--max_dead_letter_fraction, default 0.5; 1 turns the check off)."""

import json

import pytest

from models.serving.examples import make_example
from pipelines import batch_infer
from pipelines.batch_infer import error_budget_problem
from tests.test_batch_infer import penguin_values


@pytest.mark.parametrize("counters, fraction, expected", [
    ({"records_read": 100, "predictions_written": 100}, 0.5, None),
    ({"records_read": 100, "predictions_written": 50, "dead_letters_validate": 50}, 0.5, None),
    ({"records_read": 100, "predictions_written": 40, "dead_letters_validate": 60}, 0.5,
     "60 of 100 records in (60%) became dead letters, over --max_dead_letter_fraction 0.5"),
    ({"records_read": 9, "dead_letters_read": 1, "predictions_written": 0, "dead_letters_validate": 9}, 0.99,
     "nothing was scored: all 10 records in became dead letters (10)"),
    ({}, 0.5, "no records were read from the inputs"),
    ({"records_read": 100, "dead_letters_validate": 100}, 1.0, None),
])
def test_the_error_budget(counters, fraction, expected):
    problem = error_budget_problem(counters, fraction)
    assert problem == expected if expected is None else problem.startswith(expected)


@pytest.fixture
def penguins_with_ids(write_tfrecords):
    return write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in penguin_values(40)])


def test_a_misspelt_key_feature_is_refused_before_launch(penguin_model, penguins_with_ids, tmp_path, capsys):
    out = str(tmp_path / "out" / "pred")
    assert batch_infer.main(["--input", penguins_with_ids, "--model", penguin_model[0], "--output", out,
                             "--key_feature", "idd"]) == 2
    err = capsys.readouterr().err
    assert "none of the 20 records sampled from the start of the inputs would be scored" in err
    assert "key feature 'idd' is missing (the records hold ['id', 'island', 'measurements']); did you mean " \
           "--key_feature id?" in err
    assert not (tmp_path / "out").exists()  # nothing launched, nothing written


def test_a_job_that_dead_letters_most_records_fails_with_the_counts(penguin_model, write_tfrecords, tmp_path,
                                                                     capsys):
    """The first records are good (so the launch sample passes); most of the rest have no key."""
    values = penguin_values(60)
    for v in values[20:]:
        del v["id"]
    path = write_tfrecords("mixed.tfrecord", [make_example(v).SerializeToString() for v in values])
    out = str(tmp_path / "out" / "pred")
    assert batch_infer.main(["--input", path, "--model", penguin_model[0], "--output", out,
                             "--key_feature", "id"]) == 1
    assert "the job failed: 40 of 60 records in (67%) became dead letters, over --max_dead_letter_fraction 0.5" \
        in capsys.readouterr().err
    with open(out + ".manifest.json") as f:
        manifest = json.load(f)
    assert manifest["status"] == "failed" and "40 of 60 records" in manifest["error"]
    assert (manifest["counts"]["records_in"], manifest["counts"]["dead_letters"]) == (60, 40)


def test_the_budget_can_be_turned_off_and_is_checked(penguin_model, penguins_with_ids, tmp_path, capsys):
    out = str(tmp_path / "out" / "pred")
    args = ["--input", penguins_with_ids, "--model", penguin_model[0], "--output", out, "--key_feature", "idd"]
    assert batch_infer.main(args + ["--max_dead_letter_fraction", "1"]) == 0
    assert batch_infer.main(args + ["--max_dead_letter_fraction", "1.5"]) == 2
    assert "--max_dead_letter_fraction 1.5 is not between 0 and 1" in capsys.readouterr().err
