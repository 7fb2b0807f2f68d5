"""The launch sample: the first records go through the job's own checks, and a job none of whose
sampled records would be scored is refused before it starts."""

import json

import pytest

from models.serving.examples import feature_values, make_example, parse_example
from models.serving.feature_spec import Feature
from pipelines import batch_infer
from pipelines.input_sample import nothing_would_score, record_problem, sample_problems
from pipelines.inputs import input_format_of
from pipelines.options import OptionsError
from tests.test_batch_infer import penguin_values
from transforms.sources.framing import encode_record
from transforms.sources.sniff import contradiction, looks_like
from transforms.sources.text import InstanceOptions
from transforms.sources.text_formats import suffix_format

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


def framed(data):
    """One TFRecord record as TensorFlow writes it: length, its masked CRC, data, the data's CRC."""
    return encode_record(data)


@pytest.mark.parametrize("head, fmt, text, says", [
    (framed(b"x" * 30) + framed(b"y"), "tfrecord", False, "TFRecord"),
    (b'{"id": "a", "x": [1, 2]}\n{"id": "b"', "jsonl", True, "JSON Lines (its first line is a JSON object"),
    (b'\xef\xbb\xbf\n  {"id": 1}\n', "jsonl", True, "JSON Lines"),
    (b"id,measurements,island\np1,\"[1, 2, 3, 4]\",1\n", "csv", True, "CSV (its first line is a header: 'id,"),
    (b"[1, 2, 3]\n", None, True, "JSON text that starts with a list"),
    (b"hello world\n", None, True, "text that is neither JSON Lines nor CSV"),
    (b"1,2,3\n4,5,6\n", None, True, "text that is neither"),  # numbers are not a header
    (b"", None, False, "an empty file"),
    (b"\x07" * 20, None, False, "binary data that is not TFRecord framing"),
    ("é".encode() * 5 + b"\xc3", None, True, "text"),  # a character cut at the end of the head
])
def test_looks_like_reads_the_format_from_the_first_bytes(head, fmt, text, says):
    look = looks_like(head)
    assert (look.format, look.text) == (fmt, text) and says in look.description


def test_contradictions_are_only_the_clear_ones():
    jsonl, tfrecord = looks_like(b'{"a": 1}\n'), looks_like(framed(b"abc"))
    assert contradiction("tfrecord", jsonl) and contradiction("csv", jsonl) and not contradiction("jsonl", jsonl)
    assert contradiction("jsonl", tfrecord) and not contradiction("tfrecord", tfrecord)
    assert contradiction("tfrecord", looks_like(b"hello\n"))  # text is never TFRecord
    assert not contradiction("jsonl", looks_like(b"hello\n"))  # bad lines: the sample says why
    assert not any(contradiction(fmt, looks_like(b"\x07" * 20)) for fmt in ("tfrecord", "jsonl", "csv"))


def test_suffixes_name_a_format_or_none():
    assert [suffix_format(p) for p in ("a.jsonl", "b.CSV.gz", "c.tfrecord", "d.tfrecords.gz", "e.tfr",
                                       "data.txt", "data-00000-of-00004.gz", "h")] == [
        "jsonl", "csv", "tfrecord", "tfrecord", "tfrecord", None, None, None]


def test_input_format_of_files_without_a_telling_suffix(tmp_path, write_tfrecords):
    jsonl = tmp_path / "a.txt"
    jsonl.write_text('{"id": "a"}\n')
    csv = tmp_path / "b.dat"
    csv.write_text("id,x\na,1\n")
    shard = write_tfrecords("part-00000.gz", [record(id="a")], gzip=True)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert input_format_of([], listed=[str(jsonl)]) == "jsonl"
    assert input_format_of([], listed=[str(csv)]) == "csv"
    assert input_format_of([], listed=[shard]) == "tfrecord"
    assert input_format_of([], listed=[str(empty)]) == "tfrecord"  # no evidence: the default reader
    assert input_format_of(["gs://b/data-*"]) == "tfrecord"  # not listed: not read
    with pytest.raises(OptionsError, match="the inputs mix formats: jsonl .*, tfrecord"):
        input_format_of([], listed=[str(jsonl), shard])
    with pytest.raises(OptionsError, match="the inputs mix formats: csv .*, jsonl"):
        input_format_of([], listed=[str(jsonl), str(tmp_path / "c.csv")])
    notes = tmp_path / "notes"
    notes.write_text("just words\n")
    with pytest.raises(OptionsError, match=r"notes: its name does not say its format .* give --input_format"):
        input_format_of([], listed=[str(notes)])
    assert input_format_of([], "jsonl", [str(notes)]) == "jsonl"  # given: taken as given


@pytest.mark.parametrize("fmt, text", [
    ("jsonl", "".join(json.dumps(v) + "\n" for v in penguin_values(3))),
    ("csv", "id,measurements,island\n" + "".join(f'{v["id"]},"{v["measurements"]}",{v["island"]}\n'
                                                  for v in penguin_values(3))),
])
def test_a_missing_key_field_in_the_sample_names_the_closest_field(tmp_path, fmt, text):
    path = tmp_path / f"in.{fmt}"
    path.write_text(text)
    sampled, problems = sample_problems([str(path)], fmt, SPEC, None, InstanceOptions(SPEC, "idd"))
    assert sampled == 3 and [p for _, p in problems] == [
        "key field 'idd' is missing (the records hold ['id', 'island', 'measurements']); "
        "did you mean --key_feature id?"] * 3
    _, problems = sample_problems([str(path)], fmt, SPEC, None, InstanceOptions(SPEC, "zzz"))
    assert problems[0][1] == "key field 'zzz' is missing (the records hold ['id', 'island', 'measurements'])"


def test_the_key_field_stays_in_the_example_only_with_keep_key():
    instance = {"id": "k1", "measurements": [1, 2, 3, 4], "island": 2}
    for options, has_key in ((InstanceOptions(SPEC, "id"), False), (InstanceOptions(SPEC, "id", keep_key=True), True),
                             (InstanceOptions(SPEC, "id", ("measurements", "island"), keep_key=True), True)):
        example = parse_example(options.convert(instance))
        assert ("id" in example.features.feature) == has_key
        assert feature_values(example, "island") == [2]
    assert feature_values(parse_example(InstanceOptions(SPEC, "id", keep_key=True).convert(dict(instance, id=7))),
                          "id") == [7]
    with pytest.raises(ValueError, match="needs keep_extra"):
        InstanceOptions(SPEC, "id", keep_extra=False, keep_key=True)
