"""ReadKeyedTFRecords and ValidateRecords on the DirectRunner, over real TFRecord files.

Pipelines are few and each checks several things (a DirectRunner run costs seconds).
"""

import base64
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from models.examples import make_example
from models.feature_spec import Feature, make_spec
from transforms.sources.framing import encode_record
from transforms.sources.tfrecord import NoInputFilesError, ReadKeyedTFRecords, expand_patterns, key_names
from transforms.validate import ValidateRecords

SPEC = make_spec([
    Feature("x", "float32", (2,)),
    Feature("species", "string"),
    Feature("count", "int64"),
])


def serialized(**values):
    return make_example(values, SPEC).SerializeToString()


def good(i):
    return serialized(x=[float(i), i + 0.5], species=f"s{i}", count=i)


def count_is(n):
    def check(actual):
        if len(actual) != 1 or actual[0] != n:
            raise BeamAssertException(f"expected count {n}, got {actual}")
    return check


def dead_letters_match(expected):
    """expected: {key: (stage, [substrings of the error message])}; exactly these, once each."""
    def check(rows):
        keys = [r["key"] for r in rows]
        if sorted(keys) != sorted(expected):
            raise BeamAssertException(f"dead-letter keys {sorted(keys)} != {sorted(expected)}")
        for row in rows:
            stage, fragments = expected[row["key"]]
            if row["stage"] != stage:
                raise BeamAssertException(f"{row['key']}: stage {row['stage']!r}, expected {stage!r}")
            for fragment in fragments:
                if fragment not in row["error"]:
                    raise BeamAssertException(f"{row['key']}: {fragment!r} not in {row['error']!r}")
            if row["error_type"] != "RecordError":
                raise BeamAssertException(f"{row['key']}: error_type {row['error_type']!r}")
    return check


# --- ReadKeyedTFRecords ----------------------------------------------------------------------


@pytest.fixture
def two_files(tmp_path):
    from tests.helpers import write_tfrecord_file

    plain = [good(i) for i in range(5)]
    compressed = [good(10 + i) for i in range(4)] + [b""]  # an empty record is a record too
    write_tfrecord_file(str(tmp_path / "part-a.tfrecord"), plain)
    write_tfrecord_file(str(tmp_path / "part-b.tfrecord.gz"), compressed, gzip=True)
    expected = ([(f"part-a.tfrecord:{i}", r) for i, r in enumerate(plain)]
                + [(f"part-b.tfrecord.gz:{i}", r) for i, r in enumerate(compressed)])
    return str(tmp_path / "part-*"), expected


def test_reads_plain_and_gzip_files_with_deterministic_keys(two_files):
    pattern, expected = two_files
    assert len({k for k, _ in expected}) == len(expected)
    for _ in range(2):  # a second run gives the very same keys and bytes
        read = ReadKeyedTFRecords([pattern])
        assert [os.path.basename(p) for p in read.paths] == ["part-a.tfrecord", "part-b.tfrecord.gz"]
        with BeamTestPipeline() as p:
            records, dead = p | read
            assert_that(records, equal_to(expected), label="Records")
            assert_that(dead, equal_to([]), label="NoDeadLetters")
            assert_that(records | beam.combiners.Count.Globally(), count_is(len(expected)), label="Count")


def test_same_basename_in_two_directories_keys_by_full_path(tmp_path, write_tfrecords):
    os.makedirs(tmp_path / "day1")
    os.makedirs(tmp_path / "day2")
    first = [good(1), good(2)]
    second = [good(3)]
    write_tfrecords("day1/data.tfrecord", first)
    write_tfrecords("day2/data.tfrecord", second)
    read = ReadKeyedTFRecords([str(tmp_path / "day1" / "*.tfrecord"), str(tmp_path / "day2" / "*")])
    path1, path2 = read.paths
    assert path1.endswith(os.path.join("day1", "data.tfrecord"))
    assert path2.endswith(os.path.join("day2", "data.tfrecord"))
    expected = [(f"{path1}:0", first[0]), (f"{path1}:1", first[1]), (f"{path2}:0", second[0])]
    with BeamTestPipeline() as p:
        records, dead = p | read
        assert_that(records, equal_to(expected), label="Records")
        assert_that(dead, equal_to([]), label="NoDeadLetters")


def test_corrupt_tail_yields_readable_records_and_one_read_dead_letter(tmp_path, write_tfrecords):
    written = [good(i) for i in range(4)]
    partial = encode_record(good(99))[:-6]
    path = write_tfrecords("broken.tfrecord", written, tail=partial)
    tail_offset = sum(16 + len(r) for r in written)
    clean = [good(50), good(51)]
    write_tfrecords("clean.tfrecord", clean)

    def check_dead(rows):
        if len(rows) != 1:
            raise BeamAssertException(f"expected exactly one dead letter, got {rows}")
        row = rows[0]
        expected = {"key": f"broken.tfrecord:{len(written)}", "stage": "read", "error_type": "Error",
                    "input_base64": None, "source": f"{path}@{tail_offset}"}
        for field, value in expected.items():
            if row.get(field) != value:
                raise BeamAssertException(f"{field}: {row.get(field)!r} != {value!r} in {row}")
        if path not in row["error"] or f"at byte {tail_offset}" not in row["error"]:
            raise BeamAssertException(f"path or offset missing from {row['error']!r}")
        if "truncated" not in row["error"]:
            raise BeamAssertException(f"reason missing from {row['error']!r}")

    expected_records = ([(f"broken.tfrecord:{i}", r) for i, r in enumerate(written)]
                        + [(f"clean.tfrecord:{i}", r) for i, r in enumerate(clean)])
    with BeamTestPipeline() as p:
        records, dead = p | ReadKeyedTFRecords([str(tmp_path / "*.tfrecord")])
        assert_that(records, equal_to(expected_records), label="Records")
        assert_that(dead, check_dead, label="DeadLetters")
        # conservation: every record written (the partial one included) comes out exactly once
        total = (records, dead) | beam.Flatten() | beam.combiners.Count.Globally()
        assert_that(total, count_is(len(written) + 1 + len(clean)), label="Conservation")


def test_empty_glob_fails_at_construction(tmp_path):
    with pytest.raises(NoInputFilesError, match="matches no files"):
        ReadKeyedTFRecords([str(tmp_path / "*.tfrecord")])
    with pytest.raises(NoInputFilesError):
        ReadKeyedTFRecords([str(tmp_path / "missing-dir" / "part-*")])
    (tmp_path / "one.tfrecord").write_bytes(b"")
    # one good pattern does not excuse an empty one
    with pytest.raises(NoInputFilesError):
        ReadKeyedTFRecords([str(tmp_path / "one.tfrecord"), str(tmp_path / "none-*")])
    assert issubclass(NoInputFilesError, ValueError)


def test_expand_patterns_sorts_and_deduplicates(tmp_path):
    for name in ("b.tfrecord", "a.tfrecord", "c.tfrecord.gz"):
        (tmp_path / name).write_bytes(b"")
    paths = expand_patterns([str(tmp_path / "*.tfrecord*"), str(tmp_path / "a.tfrecord")])
    assert [os.path.basename(p) for p in paths] == ["a.tfrecord", "b.tfrecord", "c.tfrecord.gz"]
    assert key_names(paths) == {p: os.path.basename(p) for p in paths}
    assert key_names(["/x/d.tfrecord", "/y/d.tfrecord"]) == {
        "/x/d.tfrecord": "/x/d.tfrecord", "/y/d.tfrecord": "/y/d.tfrecord"}


# --- ValidateRecords -------------------------------------------------------------------------


def test_validate_splits_valid_records_from_dead_letters():
    valid = [(f"f:{i}", good(i)) for i in range(3)]
    bad = {
        "garbage": (b"not a proto \xff", "decode", ["not a serialized tf.Example"]),
        "missing": (make_example({"x": [1.0, 2.0], "count": 1}, SPEC).SerializeToString(),
                    "validate", ["missing required feature 'species'"]),
        "wrong_dtype": (make_example({"x": [1.0, 2.0], "species": "s", "count": 1.5}).SerializeToString(),
                        "validate", ["'count'", "float", "expected int64"]),
        "wrong_length": (serialized(x=[1.0, 2.0, 3.0], species="s", count=1),
                         "validate", ["'x' has 3 values", "needs 2"]),
        "empty_record": (b"", "validate", ["missing required feature 'x'"]),
    }
    inputs = valid[:2] + [(k, raw) for k, (raw, _, _) in bad.items()] + valid[2:]

    def check_raw(rows):
        for row in rows:
            if base64.b64decode(row["input_base64"]) != bad[row["key"]][0]:
                raise BeamAssertException(f"{row['key']}: raw bytes not kept")
            if row["source"] != row["key"]:
                raise BeamAssertException(f"{row['key']}: source {row['source']!r}")

    with BeamTestPipeline() as p:
        ok, dead = p | beam.Create(inputs) | ValidateRecords(SPEC)
        assert_that(ok, equal_to(valid), label="Valid")
        assert_that(dead, dead_letters_match({k: (stage, frags) for k, (_, stage, frags) in bad.items()}),
                    label="DeadLetters")
        assert_that(dead, check_raw, label="RawKept")
        total = (ok, dead) | beam.Flatten() | beam.combiners.Count.Globally()
        assert_that(total, count_is(len(inputs)), label="Conservation")


def test_validate_rekeys_by_bytes_and_int64_key_features():
    spec = make_spec([Feature("x", "float32", (2,))])

    def record(**values):
        return make_example(values).SerializeToString()

    r0 = record(x=[0.0, 1.0], id=b"alpha", num=10)
    r1 = record(x=[2.0, 3.0], id="b\u00e9ta", num=-7)
    no_key = record(x=[4.0, 5.0])
    invalid = record(x=[1.0], id=b"gamma", num=12)  # fails the spec before the key is read
    two_ids = record(x=[6.0, 7.0], id=[b"a", b"b"], num=[1, 2])
    not_utf8 = record(x=[8.0, 9.0], id=b"\xff\xfe", num=13)
    inputs = [("f:0", r0), ("f:1", r1), ("f:2", no_key), ("f:3", invalid), ("f:4", two_ids),
              ("f:5", not_utf8)]

    with BeamTestPipeline() as p:
        records = p | beam.Create(inputs)
        by_id, dead_id = records | "ById" >> ValidateRecords(spec, key_feature="id")
        by_num, dead_num = records | "ByNum" >> ValidateRecords(spec, key_feature="num")

        assert_that(by_id, equal_to([("alpha", r0), ("b\u00e9ta", r1)]), label="BytesKeys")
        assert_that(dead_id, dead_letters_match({
            "f:2": ("validate", ["key feature 'id'", "0 values"]),
            "f:3": ("validate", ["'x' has 1 values"]),
            "f:4": ("validate", ["key feature 'id'", "2 values"]),
            "f:5": ("validate", ["not UTF-8"]),
        }), label="BytesKeyDeadLetters")

        assert_that(by_num, equal_to([("10", r0), ("-7", r1), ("13", not_utf8)]), label="IntKeys")
        assert_that(dead_num, dead_letters_match({
            "f:2": ("validate", ["key feature 'num'", "0 values"]),
            "f:3": ("validate", ["'x' has 1 values"]),
            "f:4": ("validate", ["key feature 'num'", "2 values"]),
        }), label="IntKeyDeadLetters")

        for name, (ok, dead) in {"Id": (by_id, dead_id), "Num": (by_num, dead_num)}.items():
            total = (ok, dead) | f"Flatten{name}" >> beam.Flatten() | f"Count{name}" >> beam.combiners.Count.Globally()
            assert_that(total, count_is(len(inputs)), label=f"Conservation{name}")


def test_read_then_validate_end_to_end(tmp_path, write_tfrecords):
    """Read + validate: every record written ends as exactly one valid record or dead letter."""
    written = [good(0), b"garbage \xff\xfe", good(1), serialized(x=[1.0], species="s", count=1)]
    write_tfrecords("mixed.tfrecord.gz", written, gzip=True, tail=b"\x05\x00")
    with BeamTestPipeline() as p:
        records, read_dead = p | ReadKeyedTFRecords([str(tmp_path / "mixed.tfrecord.gz")])
        ok, dead = records | ValidateRecords(SPEC)
        assert_that(ok, equal_to([("mixed.tfrecord.gz:0", written[0]), ("mixed.tfrecord.gz:2", written[2])]),
                    label="Valid")
        stages = (read_dead, dead) | beam.Flatten() | beam.Map(lambda r: (r["key"], r["stage"]))
        assert_that(stages, equal_to([("mixed.tfrecord.gz:1", "decode"), ("mixed.tfrecord.gz:3", "validate"),
                                      ("mixed.tfrecord.gz:4", "read")]), label="DeadLetters")
