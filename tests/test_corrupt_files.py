"""Corrupt TFRecord files, reported region by region: where reading stopped, how many bytes were
skipped and what they were, a specific error type, counted in the summary and the manifest; a
file named .gz that is not gzip says so."""

import base64
import json
import os

import pytest

from models.serving.examples import make_example
from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.test_batch_infer import penguin_values
from transforms.sources.framing import RECORD_OVERHEAD
from transforms.sources.tfrecord import MAX_REGION_BYTES, ReadRecordChunksFn, corruption_dead_letter, iter_chunks


def records_of(n, seed=3):
    return [make_example(v).SerializeToString() for v in penguin_values(n, seed=seed)]


def with_bad_length_crc(path, before):
    """Flips a bit of the length CRC of record number `before`; returns that record's offset."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    offset, index = 0, 0
    while index < before:
        length = int.from_bytes(data[offset:offset + 8], "little")
        offset += RECORD_OVERHEAD + length
        index += 1
    data[offset + 8] ^= 0x40
    with open(path, "wb") as f:
        f.write(bytes(data))
    return offset


def dead_letters_of(path):
    out = []
    for item in iter_chunks(path, 64):
        if not isinstance(item, tuple):
            out.append(corruption_dead_letter(path, f"k:{item.index}", item))
    return out


def test_a_lost_framing_is_one_dead_letter_with_offset_bytes_skipped_and_the_bytes(write_tfrecords):
    records = records_of(600)
    path = write_tfrecords("lost.tfrecord", records)
    offset = with_bad_length_crc(path, 100)
    (row,) = dead_letters_of(path)
    size = os.path.getsize(path)
    assert row["error_type"] == "LengthCrcMismatch" and row["stage"] == "read"
    assert row["source"] == {"file": path, "offset": offset, "bytes_skipped": size - offset}
    with open(path, "rb") as f:
        f.seek(offset)
        assert base64.b64decode(row["input_base64"]) == f.read(MAX_REGION_BYTES)
    assert f"at byte {offset}" in row["error"] and f"{size - offset:,} bytes" in row["error"]
    kept = [r for item in iter_chunks(path, 64) if isinstance(item, tuple) for r in item[1]]
    assert kept == records[:100]


def test_a_file_named_gz_that_is_not_gzip_says_so(write_tfrecords):
    path = write_tfrecords("plain.tfrecord.gz", records_of(10))  # plain TFRecord bytes, gzip name
    (row,) = dead_letters_of(path)
    assert row["error_type"] == "NotGzip" and "is not gzip" in row["error"]
    assert row["source"]["bytes_skipped"] == os.path.getsize(path)


def test_a_real_gzip_file_is_read(write_tfrecords):
    records = records_of(10)
    path = write_tfrecords("real.tfrecord.gz", records, gzip=True)
    assert [r for _, part in iter_chunks(path, 64) for r in part] == records


def test_the_summary_and_manifest_count_unreadable_regions(penguin_model, write_tfrecords, tmp_path, capsys):
    path = write_tfrecords("lost.tfrecord", records_of(300))
    offset = with_bad_length_crc(path, 120)
    write_tfrecords("fine.tfrecord", records_of(50, seed=4))
    out = str(tmp_path / "out" / "pred")
    assert batch_infer.main(["--input", str(tmp_path / "*.tfrecord"), "--model", penguin_model[0],
                             "--output", out]) == 0
    skipped = os.path.getsize(path) - offset
    assert f"(of which 1 unreadable file region, {skipped:,} bytes skipped)" in capsys.readouterr().out
    with open(out + ".manifest.json") as f:
        counts = json.load(f)["counts"]
    assert (counts["records_in"], counts["predictions"], counts["dead_letters"]) == (171, 170, 1)
    assert (counts["unreadable_regions"], counts["unreadable_bytes"]) == (1, skipped)
    (dead,) = read_jsonl(out + ".errors-*.jsonl")
    assert dead["key"] == "lost.tfrecord:120" and dead["error_type"] == "LengthCrcMismatch"


def test_the_read_dofn_accounts_for_the_region_once(write_tfrecords):
    path = write_tfrecords("lost.tfrecord", records_of(30))
    with_bad_length_crc(path, 10)
    fn = ReadRecordChunksFn(chunk_size=8)
    fn.setup()
    outputs = list(fn.process((path, "lost.tfrecord")))
    dead = [o.value for o in outputs if hasattr(o, "tag")]
    chunks = [o for o in outputs if not hasattr(o, "tag")]
    assert len(dead) == 1 and sum(len(c.records) for c in chunks) == 10


@pytest.mark.parametrize("cut", [5, 20])
def test_a_truncated_tail_reports_its_bytes(write_tfrecords, cut):
    records = records_of(5)
    path = write_tfrecords("cut.tfrecord", records)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - cut)
    (row,) = dead_letters_of(path)
    last = size - (RECORD_OVERHEAD + len(records[-1]))
    assert row["error_type"] == "TruncatedRecord"
    assert row["source"] == {"file": path, "offset": last, "bytes_skipped": size - cut - last}
