"""ReadKeyedTFRecords on the DirectRunner over real TFRecord files, and record validation in the executor.

Pipelines are few and each checks several things (a DirectRunner run costs seconds).
"""

import base64
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from models.serving.examples import make_example
from models.serving.feature_spec import Feature, make_spec
from transforms.sources.framing import encode_record
from tests.support.fakes import FakeBatchCall, fake_model
from transforms.graph.model import parallel_graph
from transforms.records.chunk import RecordChunk
from transforms.scoring.executor import score_chunk
from transforms.sources.files import NoInputFilesError, expand_patterns, key_names
from transforms.sources.tfrecord import ReadKeyedTFRecords


def keyed(chunks):
    """(key, bytes) per record of a PCollection of RecordChunks."""
    return chunks | "Records" >> beam.FlatMap(lambda chunk: list(zip(chunk.keys, chunk.records)))


def sources(chunks):
    """(key, source) per record of a PCollection of RecordChunks."""
    return chunks | "Sources" >> beam.FlatMap(lambda chunk: [(k, dict(s)) for k, s in zip(chunk.keys, chunk.sources)])


def validate(inputs, spec, key_feature=None):
    """The executor on (key, bytes) inputs with one model that parses like TensorFlow:
    ([(final key, bytes)] scored, dead letters)."""
    graph = parallel_graph([fake_model("m", spec)])
    chunk = RecordChunk([k for k, _ in inputs], [r for _, r in inputs],
                        [{"file": "f", "record": i} for i in range(len(inputs))])
    scored = score_chunk(graph, {"m": FakeBatchCall(spec, feature="x")}, chunk, key_feature)
    return [(scored.keys[i], scored.records[i]) for i in scored.row_positions()], scored.dead

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
        matched = expand_patterns([pattern])
        assert [os.path.basename(p) for p in matched] == ["part-a.tfrecord", "part-b.tfrecord.gz"]
        with BeamTestPipeline() as p:
            chunks, dead = p | read
            records = keyed(chunks)
            assert_that(records, equal_to(expected), label="Records")
            assert_that(dead, equal_to([]), label="NoDeadLetters")
            assert_that(records | beam.combiners.Count.Globally(), count_is(len(expected)), label="Count")
            paths = {os.path.basename(p): p for p in matched}
            assert_that(sources(chunks), equal_to([
                (k, {"file": paths[k.split(":")[0]], "record": int(k.split(":")[1])}) for k, _ in expected]),
                label="Sources")


def test_same_basename_in_two_directories_keys_by_full_path(tmp_path, write_tfrecords):
    os.makedirs(tmp_path / "day1")
    os.makedirs(tmp_path / "day2")
    first = [good(1), good(2)]
    second = [good(3)]
    write_tfrecords("day1/data.tfrecord", first)
    write_tfrecords("day2/data.tfrecord", second)
    patterns = [str(tmp_path / "day1" / "*.tfrecord"), str(tmp_path / "day2" / "*")]
    read = ReadKeyedTFRecords(patterns)
    path1, path2 = expand_patterns(patterns)
    assert path1.endswith(os.path.join("day1", "data.tfrecord"))
    assert path2.endswith(os.path.join("day2", "data.tfrecord"))
    expected = [(f"{path1}:0", first[0]), (f"{path1}:1", first[1]), (f"{path2}:0", second[0])]
    with BeamTestPipeline() as p:
        chunks, dead = p | read
        assert_that(keyed(chunks), equal_to(expected), label="Records")
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
        expected = {"key": f"broken.tfrecord:{len(written)}", "stage": "read", "error_type": "TruncatedRecord",
                    "input_base64": base64.b64encode(partial).decode(), "model": None,
                    "source": {"file": path, "offset": tail_offset, "bytes_skipped": len(partial)}}
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
        chunks, dead = p | ReadKeyedTFRecords([str(tmp_path / "*.tfrecord")])
        records = keyed(chunks)
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


# --- validation inside the executor ---------------------------------------------------------


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
    ok, dead = validate(inputs, SPEC)
    assert ok == valid
    dead_letters_match({k: (stage, frags) for k, (_, stage, frags) in bad.items()})(dead)
    position = {k: i for i, (k, _) in enumerate(inputs)}
    for row in dead:
        assert base64.b64decode(row["input_base64"]) == bad[row["key"]][0]
        assert row["source"] == {"file": "f", "record": position[row["key"]]}
        # a record that is not a tf.Example fails before any model; the others in the model "m"
        assert row["model"] == (None if row["stage"] == "decode" else "m")
    assert len(ok) + len(dead) == len(inputs)


def test_validate_rekeys_by_bytes_and_int64_key_features():
    spec = make_spec([Feature("x", "float32", (2,))])

    def record(**values):
        return make_example(values).SerializeToString()

    r0 = record(x=[0.0, 1.0], id=b"alpha", num=10)
    r1 = record(x=[2.0, 3.0], id="b\u00e9ta", num=-7)
    no_key = record(x=[4.0, 5.0])
    invalid = record(x=[1.0], id=b"gamma", num=12)  # a key, but the record does not fit the spec
    two_ids = record(x=[6.0, 7.0], id=[b"a", b"b"], num=[1, 2])
    not_utf8 = record(x=[8.0, 9.0], id=b"\xff\xfe", num=13)
    inputs = [("f:0", r0), ("f:1", r1), ("f:2", no_key), ("f:3", invalid), ("f:4", two_ids),
              ("f:5", not_utf8)]

    by_id, dead_id = validate(inputs, spec, key_feature="id")
    assert by_id == [("alpha", r0), ("b\u00e9ta", r1)]
    # a dead letter carries the key feature's value whenever the record has a usable one
    dead_letters_match({
        "f:2": ("validate", ["key feature 'id'", "0 values"]),
        "gamma": ("validate", ["'x' has 1 values"]),
        "f:4": ("validate", ["key feature 'id'", "2 values"]),
        "f:5": ("validate", ["not UTF-8"]),
    })(dead_id)

    by_num, dead_num = validate(inputs, spec, key_feature="num")
    assert by_num == [("10", r0), ("-7", r1), ("13", not_utf8)]
    dead_letters_match({
        "f:2": ("validate", ["key feature 'num'", "0 values"]),
        "12": ("validate", ["'x' has 1 values"]),
        "f:4": ("validate", ["key feature 'num'", "2 values"]),
    })(dead_num)
    for ok, dead in ((by_id, dead_id), (by_num, dead_num)):
        assert len(ok) + len(dead) == len(inputs)


def test_read_then_score_end_to_end(tmp_path, write_tfrecords):
    """Read + the executor: every record written ends as exactly one scored record or dead letter."""
    written = [good(0), b"garbage \xff\xfe", good(1), serialized(x=[1.0], species="s", count=1)]
    path = write_tfrecords("mixed.tfrecord.gz", written, gzip=True, tail=b"\x05\x00")
    graph = parallel_graph([fake_model("m", SPEC)])

    def score(chunk):
        scored = score_chunk(graph, {"m": FakeBatchCall(SPEC)}, chunk)
        return [("ok", scored.keys[i]) for i in scored.row_positions()] + [
            ("dead", d["key"], d["stage"], d["source"]["record"]) for d in scored.dead]

    with BeamTestPipeline() as p:
        chunks, read_dead = p | ReadKeyedTFRecords([path])
        outcomes = chunks | beam.FlatMap(score)
        read = read_dead | beam.Map(lambda r: ("dead", r["key"], r["stage"], r["source"]["offset"]))
        tail_offset = sum(16 + len(r) for r in written)
        assert_that((outcomes, read) | beam.Flatten(), equal_to([
            ("ok", "mixed.tfrecord.gz:0"), ("ok", "mixed.tfrecord.gz:2"),
            ("dead", "mixed.tfrecord.gz:1", "decode", 1), ("dead", "mixed.tfrecord.gz:3", "validate", 3),
            ("dead", "mixed.tfrecord.gz:4", "read", tail_offset)]))
