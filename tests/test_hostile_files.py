"""Hostile input files: bounded memory whatever they hold, and every record accounted for.

Bombs are built here, small on disk: a gzip member per piece (gzip readers take concatenated
members as one stream), so 1,500 records of 1 MiB of zeros are a 1.5 MB file. The job-level
cases run `python -m pipelines.batch_infer` in a fresh process under a parent that reports its
child's peak RSS (getrusage(RUSAGE_CHILDREN)), next to a clean job of the same record count.
The records' size never shows in the peak: no record over the cap is read, no chunk holds more
than --max_batch_bytes of them, no dead letter more than 64 KiB of its input.
"""

import base64
import gzip
import hashlib
import math
import os
import subprocess
import sys
import tracemalloc

import pytest
from tensorflow.core.example import example_pb2

from models.serving.examples import make_example
from tests.helpers import read_jsonl
from tests.test_batch_infer import penguin_values
from transforms.records.dead_letters import FIELDS, MAX_INPUT_BYTES, InputHead, dead_letter
from transforms.sources.framing import (IMPLAUSIBLE_LENGTH, RECORD_TOO_LARGE, TRUNCATED_RECORD, Corruption, Record,
                                        encode_record, masked_crc32c, read_records)
from transforms.sources.instances import instance_to_example
from transforms.sources.text_formats import LineProblem, bounded_lines, iter_csv, iter_jsonl
from transforms.sources.text import iter_file_instances
from transforms.sources.tfrecord import iter_chunks, open_records_stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
ZEROS_MEMBER = gzip.compress(bytes(MIB), 9)  # 1 MiB of zeros as one gzip member (about 1 KB)


def good_records(n, seed=5):
    return [make_example(v).SerializeToString() for v in penguin_values(n, seed=seed)]


def record_header(length):
    header = length.to_bytes(8, "little")
    return header + masked_crc32c(header).to_bytes(4, "little")


def zeros_record_members(mib):
    """gzip members holding one TFRecord record of `mib` MiB of zeros, its framing valid."""
    footer = masked_crc32c_of_zeros(mib).to_bytes(4, "little")
    return [gzip.compress(record_header(mib * MIB))] + [ZEROS_MEMBER] * mib + [gzip.compress(footer)]


def masked_crc32c_of_zeros(mib):
    import google_crc32c

    crc = google_crc32c.Checksum()
    block = bytes(MIB)
    for _ in range(mib):
        crc.update(block)
    value = int.from_bytes(crc.digest(), "big")
    return (((value >> 15) | (value << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_members(path, members):
    with open(path, "wb") as f:
        for member in members:
            f.write(member)
    return str(path)


def framed_items(path, **kwargs):
    with open_records_stream(path) as stream:
        return list(read_records(stream, **kwargs))


# --- dead letters keep a bounded head ----------------------------------------------------------


def test_a_dead_letter_keeps_64_kib_of_its_input_with_the_whole_length_and_sha256():
    raw = os.urandom(MAX_INPUT_BYTES * 3 + 7)
    row = dead_letter("decode", "not a tf.Example", key="f:1", raw=raw)
    assert list(row) == list(FIELDS)
    assert base64.b64decode(row["input_base64"]) == raw[:65536]
    assert row["input_size"] == len(raw) and row["input_sha256"] == hashlib.sha256(raw).hexdigest()
    small = dead_letter("decode", "x", raw=b"abc")
    assert base64.b64decode(small["input_base64"]) == b"abc" and small["input_size"] == 3
    skipped = dead_letter("read", "too large", raw=InputHead(raw[:100], 5 * 10 ** 9))
    assert base64.b64decode(skipped["input_base64"]) == raw[:100]
    assert (skipped["input_size"], skipped["input_sha256"]) == (5 * 10 ** 9, None)  # never read whole
    none = dead_letter("infer", "x")
    assert (none["input_base64"], none["input_size"], none["input_sha256"]) == (None, None, None)


# --- TFRecord: a length is checked before anything is allocated ---------------------------------


def test_a_record_over_the_cap_is_skipped_unread_and_reading_goes_on(tmp_path):
    good = good_records(3)
    big = os.urandom(300_000)
    path = tmp_path / "mixed.tfrecord"
    path.write_bytes(b"".join(encode_record(r) for r in [good[0], big, good[1], good[2]]))
    items = framed_items(str(path), max_record_bytes=200_000)
    assert [type(i).__name__ for i in items] == ["Record", "Corruption", "Record", "Record"]
    too_large = items[1]
    assert (too_large.index, too_large.kind, too_large.fatal) == (1, RECORD_TOO_LARGE, False)
    assert too_large.data == InputHead(big[:MAX_INPUT_BYTES], len(big))
    assert [i.data for i in items if isinstance(i, Record)] == good
    assert [i.index for i in items] == [0, 1, 2, 3]  # conservation: every record is one item


@pytest.mark.parametrize("gz", [False, True])
def test_iter_chunks_hands_over_a_record_over_the_cap_as_one_corruption_and_reads_on(tmp_path, gz):
    """Plain files: TensorFlow's reader, then the framing reader from the record over the cap on."""
    good = good_records(6)
    body = b"".join(encode_record(r) for r in good[:3]) + encode_record(os.urandom(5000)) + b"".join(
        encode_record(r) for r in good[3:])
    path = tmp_path / ("big.tfrecord.gz" if gz else "big.tfrecord")
    path.write_bytes(gzip.compress(body) if gz else body)
    items = list(iter_chunks(str(path), 2, max_record_bytes=4000))
    records = [(first + i, r) for item in items if isinstance(item, tuple) for first, part in [item]
               for i, r in enumerate(part)]
    assert records == list(zip([0, 1, 2, 4, 5, 6], good))
    assert [(c.index, c.kind, c.data.size) for c in items if isinstance(c, Corruption)] == [(3, RECORD_TOO_LARGE, 5000)]


def test_an_over_cap_record_cut_short_is_a_truncated_record(tmp_path):
    path = tmp_path / "cut.tfrecord"
    path.write_bytes(encode_record(b"ok") + record_header(500_000) + bytes(1000))
    items = framed_items(str(path), max_record_bytes=1000)
    assert isinstance(items[0], Record) and len(items) == 2
    assert (items[1].kind, items[1].fatal, items[1].offset) == (TRUNCATED_RECORD, True, 18)


def test_a_record_claiming_gigabytes_in_a_tiny_gzip_file_is_refused_without_reading_it(tmp_path):
    """The issue's 3 MB file whose single record claims 3 GB, as a header alone: no length over 2 GiB
    is a protobuf, so the framing is lost there, at once."""
    path = write_members(tmp_path / "claims.tfrecord.gz", [gzip.compress(record_header(3 * 10 ** 9))]
                         + [ZEROS_MEMBER] * 3)
    tracemalloc.start()
    items = list(iter_chunks(path, 1024))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(type(i).__name__, i.kind) for i in items] == [("Corruption", IMPLAUSIBLE_LENGTH)]
    assert peak < 32 * MIB


def test_a_gzip_bomb_record_under_2_gib_is_skipped_with_bounded_memory(tmp_path):
    """512 MiB of zeros (a 0.5 MB file) between good records: one RecordTooLarge, the others read,
    and never more than a few MiB held at once."""
    good = good_records(4)
    members = [gzip.compress(encode_record(good[0]) + encode_record(good[1]))] + zeros_record_members(512) + [
        gzip.compress(encode_record(good[2]) + encode_record(good[3]))]
    path = write_members(tmp_path / "bomb.tfrecord.gz", members)
    assert os.path.getsize(path) < 1 * MIB
    tracemalloc.start()
    items = list(iter_chunks(path, 1024))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    records = [r for item in items if isinstance(item, tuple) for r in item[1]]
    corruptions = [item for item in items if isinstance(item, Corruption)]
    assert records == good
    assert [(c.index, c.kind) for c in corruptions] == [(2, RECORD_TOO_LARGE)]
    assert corruptions[0].data.size == 512 * MIB and corruptions[0].data.head == bytes(MAX_INPUT_BYTES)
    assert peak < 64 * MIB, f"peak {peak / MIB:.0f} MiB of Python allocations"


def test_chunks_of_large_records_close_at_the_byte_budget_before_they_pile_up(tmp_path):
    """1,500 records of 1 MiB of zeros (1.5 MB of gzip): read one chunk at a time, each under the
    byte budget, never 1,024 records of 1 MiB at once."""
    path = write_members(tmp_path / "zeros.tfrecord.gz", [gzip.compress(encode_record(bytes(MIB)), 9)] * 1500)
    assert os.path.getsize(path) < 2 * MIB
    tracemalloc.start()
    counts = [len(item[1]) for item in iter_chunks(path, 1024, chunk_bytes=512 * 1024)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert counts == [1] * 1500
    assert peak < 48 * MIB, f"peak {peak / MIB:.0f} MiB of Python allocations"


# --- empty and odd gzip files -------------------------------------------------------------------


@pytest.mark.parametrize("content, kinds", [
    (b"", []),  # a 0-byte file: zero records
    (gzip.compress(b"")[:10], ["CorruptCompressedStream"]),  # a gzip header only: one read dead letter
    (gzip.compress(b""), []),  # a complete gzip of nothing: zero records
])
def test_empty_and_header_only_gzip_files_are_zero_records_or_one_corruption(tmp_path, content, kinds):
    path = tmp_path / "odd.tfrecord.gz"
    path.write_bytes(content)
    items = list(iter_chunks(str(path), 1024))
    assert [item.kind for item in items] == kinds
    assert all(item.fatal for item in items)


# --- text: bounded lines, undecodable CSV lines, NaN -------------------------------------------


def test_a_line_over_the_limit_is_a_line_problem_holding_its_head_and_the_next_lines_are_read():
    class Pieces:
        def __init__(self, data):
            self._data, self._pos = data, 0

        def read(self, size):
            piece = self._data[self._pos:self._pos + min(size, 1000)]
            self._pos += len(piece)
            return piece

    long_line = b"x" * 5000
    lines = list(bounded_lines(Pieces(b"a\n" + long_line + b"\nb\nlast"), max_bytes=2000))
    assert lines[0] == b"a\n" and lines[2:] == [b"b\n", b"last"]
    assert isinstance(lines[1], LineProblem) and lines[1].size == len(long_line)
    assert lines[1].head == long_line[:MAX_INPUT_BYTES]


def test_a_gzip_jsonl_bomb_line_is_one_decode_dead_letter_with_bounded_memory(tmp_path):
    """A 256 MiB line of spaces in a 0.3 MB .jsonl.gz between two good lines."""
    spaces = gzip.compress(b" " * MIB, 9)
    members = [gzip.compress(b'{"id": "a"}\n')] + [spaces] * 256 + [gzip.compress(b'\n{"id": "b"}\n')]
    path = write_members(tmp_path / "bomb.jsonl.gz", members)
    tracemalloc.start()
    items = list(iter_file_instances(path, "jsonl", ()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(n, getattr(i, "stage", None)) for n, i, _ in items] == [(1, None), (2, "decode"), (3, None)]
    assert "over the reader's line limit" in str(items[1][1]) and items[1][2].size == 256 * MIB
    assert peak < 160 * MIB, f"peak {peak / MIB:.0f} MiB of Python allocations"


def test_each_undecodable_csv_line_is_its_own_dead_letter_with_its_bytes_and_no_line_is_lost():
    lines = [b"id,x\n"] + [f"r{i},{i}\n".encode() for i in range(2, 12)]
    bad = {12: b"r12,\xff\xfe\n", 13: b"r13,\xc3\x28\n", 14: b"\xe9t\xe9,1\n"}
    lines += [bad[n] for n in (12, 13, 14)] + [f"r{i},{i}\n".encode() for i in range(15, 2000)]
    items = list(iter_csv(lines, ()))
    dead = [(n, item.stage, raw) for n, item, raw in items if not isinstance(item, dict)]
    assert dead == [(n, "decode", bad[n].rstrip(b"\n")) for n in (12, 13, 14)]
    assert all("not UTF-8" in str(item) for _, item, _ in items if not isinstance(item, dict))
    rows = [item for _, item, _ in items if isinstance(item, dict)]
    assert [r["id"] for r in rows] == [f"r{i}" for i in list(range(2, 12)) + list(range(15, 2000))]
    assert len(items) == len(lines) - 1  # every line after the header: a row or a dead letter


def test_undecodable_csv_lines_of_a_file_are_dead_letters_keyed_by_their_own_line(tmp_path, penguin_model):
    from models.serving.model import load_serving_model
    from transforms.sources.text import InstanceOptions, keyed_examples

    spec = tuple(load_serving_model(penguin_model[0]).feature_spec)
    rows = [f'p{i},"[40, 18, 190, 3700]",{i % 3}\n'.encode() for i in range(2, 20)]
    rows[10:13] = [b'p12,"[40, 18, 190, 3700]",\xff\n', b'p13\xfe,"[1, 2, 3, 4]",1\n', b'\xc3\x28,"[1]",2\n']
    path = tmp_path / "a.csv"
    path.write_bytes(b"id,measurements,island\n" + b"".join(rows))
    items = list(keyed_examples(str(path), "a.csv", "csv", InstanceOptions(spec)))
    dead = {key: example for _, key, example, _ in items if isinstance(example, dict)}
    assert sorted(dead) == ["a.csv:12", "a.csv:13", "a.csv:14"]
    for number, row in zip((12, 13, 14), rows[10:13]):
        letter = dead[f"a.csv:{number}"]
        assert letter["stage"] == "decode" and base64.b64decode(letter["input_base64"]) == row.rstrip(b"\n")
        assert letter["source"] == {"file": str(path), "line": number}
    assert len(items) == len(rows)  # every line: an example or a dead letter


def test_sniffing_the_head_of_a_gzip_bomb_inflates_only_a_piece(tmp_path):
    from transforms.sources.sniff import read_head

    path = write_members(tmp_path / "zeros.jsonl.gz", [ZEROS_MEMBER] * 1500)
    tracemalloc.start()
    head = read_head(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert head and set(head) == {0}
    assert peak < 64 * MIB, f"peak {peak / MIB:.0f} MiB of Python allocations"


def test_an_undecodable_line_inside_a_quoted_field_spoils_only_its_row():
    lines = [b"id,note\n", b'a,"one\n', b'tw\xff"\n', b'b,fine\n']
    items = list(iter_csv(lines, ()))
    assert [(n, getattr(i, "stage", None)) for n, i, _ in items] == [(2, "decode"), (4, None)]
    assert items[0][2] == b'a,"one\ntw\xff"' and "line 3" in str(items[0][1])


def float_values(record, name):
    example = example_pb2.Example.FromString(record)
    return list(example.features.feature[name].float_list.value)


def test_nan_and_infinities_pass_from_json_as_literals_and_as_text():
    from models.serving.feature_spec import Feature

    spec = (Feature("f", "float32", (3,)),)
    lines = [b'{"f": [NaN, Infinity, -Infinity]}\n', b'{"f": ["NaN", "Infinity", "-Infinity"]}\n',
             b'{"f": ["nan", "inf", "-inf"]}\n', b'{"f": [NaN, 1, "x"]}\n', b'{"f": NaN]}\n']
    items = list(iter_jsonl(lines))
    converted = [instance_to_example(item, spec) for _, item, _ in items[:3]]
    for record in converted:
        values = float_values(record, "f")
        assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf
    with pytest.raises(ValueError, match="'x' is not a number"):
        instance_to_example(items[3][1], spec)
    assert items[4][1].stage == "decode"  # still not JSON: NaN does not excuse the rest


def test_nan_and_infinities_pass_from_csv_lists_and_cells():
    from models.serving.feature_spec import Feature

    spec = (Feature("f", "float32", (2,)), Feature("g", "float32", ()))
    items = list(iter_csv([b"f,g\n", b'"[NaN, -Infinity]",inf\n'], spec))
    record = instance_to_example(items[0][1], spec)
    f, g = float_values(record, "f"), float_values(record, "g")
    assert math.isnan(f[0]) and f[1] == -math.inf and g == [math.inf]


# --- whole jobs: peak RSS next to a clean job of the same size ----------------------------------

PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", code)
"""


def job_peak_rss(args, tmp_path, name):
    """(exit code, peak RSS in MiB) of `python -m pipelines.batch_infer args` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "pipelines.batch_infer", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    (tmp_path / f"{name}.log").write_text(done.stdout + done.stderr)
    line = [l for l in done.stdout.splitlines() if l.startswith("PEAK_RSS_KB")][-1].split()
    return int(line[3]), int(line[1]) / 1024


def run_and_measure(tmp_path, name, inputs, model_dir):
    out = str(tmp_path / name / "pred")
    args = [a for path in inputs for a in ("--input", path)] + [
        "--model", model_dir, "--output", out, "--max_dead_letter_fraction", "1"]
    code, peak = job_peak_rss(args, tmp_path, name)
    assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return peak, read_jsonl(out + "-*.jsonl"), read_jsonl(out + ".errors-*.jsonl")


def test_a_job_over_1500_records_of_1_mib_stays_near_a_clean_job_in_peak_rss(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    good = good_records(20)
    good_path = write_members(tmp_path / "good.tfrecord.gz", [gzip.compress(b"".join(map(encode_record, good)))])
    bomb = write_members(tmp_path / "zeros.tfrecord.gz", [gzip.compress(encode_record(bytes(MIB)), 9)] * 1500)
    clean = write_members(tmp_path / "clean.tfrecord.gz",
                          [gzip.compress(b"".join(map(encode_record, good_records(1500, seed=9))))])
    clean_peak, clean_rows, clean_dead = run_and_measure(tmp_path, "clean", [good_path, clean], version_dir)
    bomb_peak, rows, dead = run_and_measure(tmp_path, "bomb", [good_path, bomb], version_dir)
    print(f"peak RSS: clean job {clean_peak:.0f} MiB, 1,500 x 1 MiB job {bomb_peak:.0f} MiB")
    assert (len(clean_rows), len(clean_dead)) == (1520, 0)
    assert len(rows) == 20 and len(dead) == 1500  # conservation: 1,520 records in
    assert {d["stage"] for d in dead} == {"decode"} and {d["input_size"] for d in dead} == {MIB}
    assert {len(base64.b64decode(d["input_base64"])) for d in dead} == {MAX_INPUT_BYTES}
    # 10.7 GB before; 1.4 GB with 64 KiB heads while every stage's dead letters went through one
    # Flatten, which the local FnApiRunner holds whole (transforms.sinks.files.WriteJsonLinesOfEach)
    assert bomb_peak < clean_peak + 300, f"{bomb_peak:.0f} MiB against {clean_peak:.0f} MiB for a clean job"


def test_a_job_with_empty_header_only_and_bomb_gzip_files_beside_good_ones(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    good = good_records(30)
    good_path = write_members(tmp_path / "good.tfrecord.gz", [gzip.compress(b"".join(map(encode_record, good)))])
    (tmp_path / "empty.tfrecord.gz").write_bytes(b"")
    (tmp_path / "header.tfrecord.gz").write_bytes(gzip.compress(b"")[:10])
    claims = write_members(tmp_path / "claims.tfrecord.gz", [gzip.compress(record_header(3 * 10 ** 9))]
                           + [ZEROS_MEMBER] * 3000)
    big = write_members(tmp_path / "big.tfrecord.gz", zeros_record_members(1024))
    inputs = [good_path, str(tmp_path / "empty.tfrecord.gz"), str(tmp_path / "header.tfrecord.gz"), claims, big]
    clean_peak, _, _ = run_and_measure(tmp_path, "clean", [good_path], version_dir)
    peak, rows, dead = run_and_measure(tmp_path, "odd", inputs, version_dir)
    print(f"peak RSS: clean job {clean_peak:.0f} MiB, with the odd files {peak:.0f} MiB")
    assert len(rows) == len(good)
    by_file = {os.path.basename(d["source"]["file"]): d["error_type"] for d in dead}
    assert by_file == {"header.tfrecord.gz": "CorruptCompressedStream", "claims.tfrecord.gz": "ImplausibleLength",
                       "big.tfrecord.gz": "RecordTooLarge"}
    assert [d["input_size"] for d in dead if d["error_type"] == "RecordTooLarge"] == [1024 * MIB]
    assert peak < clean_peak + 300, f"{peak:.0f} MiB against {clean_peak:.0f} MiB for a clean job"


def test_dead_letters_of_every_stage_are_written_as_one_set_of_shards_without_a_flatten(tmp_path):
    import apache_beam as beam

    from transforms.sinks.errors import WriteDeadLetters

    stages = {"read": 3, "decode": 5, "write": 0}
    prefix = str(tmp_path / "errors")
    with beam.Pipeline() as p:
        parts = tuple(p | f"Make{stage}" >> beam.Create([dead_letter(stage, f"{stage} {i}", key=f"{stage}:{i}")
                                                          for i in range(n)])
                      for stage, n in stages.items())
        parts | WriteDeadLetters(prefix)
    rows = read_jsonl(prefix + "-*.jsonl")
    assert sorted(r["key"] for r in rows) == sorted(f"{s}:{i}" for s, n in stages.items() for i in range(n))
    names = sorted(os.listdir(tmp_path))
    assert names and all(n.startswith("errors-") and "-of-" in n and n.endswith(".jsonl") for n in names)
    assert not [n for n in names if n.startswith("beam-temp")]
