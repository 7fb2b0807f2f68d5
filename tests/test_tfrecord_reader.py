"""transforms.sources.framing against files written by TensorFlow's own TFRecordWriter.

Pure tests (no pipeline). Every case checks conservation: each record written is accounted for
by exactly one Record or Corruption, except after a fatal Corruption, where the framing is lost
and nothing further can be attributed.
"""

import gzip
import io
import zlib

import numpy as np
import pytest

from transforms.sources.framing import Corruption, Record, encode_record, masked_crc32c, read_records
from transforms.sources.gzip_recovering import GzipRecoveringReader
from transforms.sources.tfrecord import is_gzip, open_records_stream

HEADER_BYTES = 12  # uint64 length + masked crc32c of the length
FRAMING_BYTES = 16  # header + masked crc32c of the data


def payloads(count=6, seed=0):
    """Varied records: empty, tiny, larger, random (incompressible) bytes."""
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 7, 300, 5000, 64][:count] + [int(s) for s in rng.integers(1, 2000, max(0, count - 6))]
    return [rng.bytes(size) for size in sizes]


def offsets_of(records):
    """Expected header offset of each record: sum of (16 + len) of the records before it."""
    out, offset = [], 0
    for r in records:
        out.append(offset)
        offset += FRAMING_BYTES + len(r)
    return out


def read_file(path):
    with open_records_stream(path) as stream:
        return list(read_records(stream))


def split(items):
    records = [i for i in items if isinstance(i, Record)]
    corruptions = [i for i in items if isinstance(i, Corruption)]
    assert len(records) + len(corruptions) == len(items), "read_records yielded something else"
    return records, corruptions


def assert_clean_read(items, written):
    records, corruptions = split(items)
    assert corruptions == []
    assert len(records) == len(written)  # conservation
    assert [r.data for r in records] == written
    assert [r.index for r in records] == list(range(len(written)))
    assert [r.offset for r in records] == offsets_of(written)


def assert_records_are_prefix(records, written):
    expected_offsets = offsets_of(written)
    for r in records:
        assert r.data == written[r.index]
        assert r.offset == expected_offsets[r.index]


def flip_byte(path, position):
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))


# --- clean files -----------------------------------------------------------------------------


def test_reads_exactly_what_tensorflow_wrote(write_tfrecords):
    written = payloads(12)
    path = write_tfrecords("plain.tfrecord", written)
    items = read_file(path)
    assert_clean_read(items, written)
    with open(path, "rb") as f:
        size = len(f.read())
    assert size == sum(FRAMING_BYTES + len(r) for r in written)


def test_reads_gzip_file_through_open_records_stream(write_tfrecords):
    written = payloads(10, seed=1)
    path = write_tfrecords("compressed.tfrecord.gz", written, gzip=True)
    assert is_gzip(path)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really gzip on disk, not a plain TFRecord
    items = read_file(path)
    # offsets are in the uncompressed stream
    assert_clean_read(items, written)


def test_gzip_detection_is_by_extension():
    assert is_gzip("gs://bucket/a.tfrecord.GZ")
    assert is_gzip("x.gzip")
    assert not is_gzip("x.tfrecord")
    assert not is_gzip("x.gz.tfrecord")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_empty_file_has_no_records(write_tfrecords, gz):
    path = write_tfrecords("empty.tfrecord" + (".gz" if gz else ""), [], gzip=gz)
    assert read_file(path) == []


def test_empty_stream_has_no_records():
    assert list(read_records(io.BytesIO(b""))) == []


# --- encoding interop ------------------------------------------------------------------------


def test_encode_record_matches_tensorflow_bytes(write_tfrecords):
    written = payloads(8, seed=2)
    path = write_tfrecords("ref.tfrecord", written)
    with open(path, "rb") as f:
        assert f.read() == b"".join(encode_record(r) for r in written)


def test_encode_record_is_readable_by_tf_data(tmp_path):
    import tensorflow as tf

    written = payloads(9, seed=3)
    path = str(tmp_path / "ours.tfrecord")
    with open(path, "wb") as f:
        for r in written:
            f.write(encode_record(r))
    read_back = [t.numpy() for t in tf.data.TFRecordDataset([path])]
    assert read_back == written
    # and our reader round-trips our own encoding too
    assert_clean_read(list(read_records(io.BytesIO(b"".join(encode_record(r) for r in written)))), written)


def test_masked_crc32c_known_value():
    # crc32c("123456789") = 0xE3069283 (the standard check value), masked as TFRecord does
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") != crc


# --- corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [5, HEADER_BYTES, HEADER_BYTES + 10, "all_but_one"])
def test_truncated_tail_is_fatal_at_the_partial_record(write_tfrecords, keep):
    written = payloads(6, seed=4)
    partial = b"partial payload that never finished"
    encoded = encode_record(partial)
    cut = len(encoded) - 1 if keep == "all_but_one" else keep
    path = write_tfrecords("tail.tfrecord", written, tail=encoded[:cut])

    items = read_file(path)
    records, corruptions = split(items)
    assert [r.data for r in records] == written  # every earlier record returned
    assert_records_are_prefix(records, written)
    assert len(corruptions) == 1 and items[-1] is corruptions[0]
    c = corruptions[0]
    assert c.fatal
    assert c.index == len(written)
    assert c.offset == sum(FRAMING_BYTES + len(r) for r in written)  # where the partial record starts
    assert "truncated record" in c.reason
    if cut < HEADER_BYTES:
        assert "header" in c.reason
    assert c.data is None
    # conservation: records before + 1 corruption == records written (the partial one included)
    assert len(records) + len(corruptions) == len(written) + 1


def test_file_truncated_inside_a_record(write_tfrecords, tmp_path):
    written = payloads(6, seed=5)
    path = write_tfrecords("cut.tfrecord", written)
    offsets = offsets_of(written)
    victim = 4  # cut in the middle of record 4's data
    with open(path, "r+b") as f:
        f.truncate(offsets[victim] + HEADER_BYTES + len(written[victim]) // 2)

    records, corruptions = split(read_file(path))
    assert [r.data for r in records] == written[:victim]
    assert_records_are_prefix(records, written)
    assert len(corruptions) == 1
    assert corruptions[0].fatal and corruptions[0].index == victim and corruptions[0].offset == offsets[victim]
    assert len(records) + len(corruptions) == victim + 1


@pytest.mark.parametrize("where", ["data", "data_crc"])
def test_flipped_data_byte_spoils_one_record_and_reading_goes_on(write_tfrecords, where):
    written = payloads(7, seed=6)
    path = write_tfrecords("flip.tfrecord", written)
    offsets = offsets_of(written)
    victim = 3
    assert len(written[victim]) > 10
    if where == "data":
        position = offsets[victim] + HEADER_BYTES + 10
        expected_payload = bytearray(written[victim])
        expected_payload[10] ^= 0xFF
        expected_payload = bytes(expected_payload)
    else:
        position = offsets[victim] + HEADER_BYTES + len(written[victim])  # first byte of the data CRC
        expected_payload = written[victim]
    flip_byte(path, position)

    items = read_file(path)
    records, corruptions = split(items)
    assert len(corruptions) == 1
    c = corruptions[0]
    assert not c.fatal
    assert c.reason == "data CRC mismatch"
    assert (c.index, c.offset) == (victim, offsets[victim])
    assert c.data == expected_payload
    # the later records are still read, with their true indices and offsets
    assert [r.index for r in records] == [i for i in range(len(written)) if i != victim]
    assert_records_are_prefix(records, written)
    assert [i.index for i in items] == list(range(len(written)))
    assert len(records) + len(corruptions) == len(written)  # conservation


@pytest.mark.parametrize("byte_in_header", [0, 3, 8, 11], ids=["len0", "len3", "lencrc0", "lencrc3"])
def test_flipped_length_byte_is_fatal(write_tfrecords, byte_in_header):
    written = payloads(6, seed=7)
    path = write_tfrecords("len.tfrecord", written)
    offsets = offsets_of(written)
    victim = 2
    flip_byte(path, offsets[victim] + byte_in_header)

    items = read_file(path)
    records, corruptions = split(items)
    assert [r.data for r in records] == written[:victim]
    assert_records_are_prefix(records, written)
    assert len(corruptions) == 1 and items[-1] is corruptions[0]
    c = corruptions[0]
    assert c.fatal
    assert "length CRC" in c.reason
    assert (c.index, c.offset) == (victim, offsets[victim])
    assert len(records) + len(corruptions) == victim + 1


def truncated_gzip_file(write_tfrecords, name, written, fraction):
    """Writes written as a gzip TFRecord file, cuts the compressed file at fraction of its size;
    returns (path, number of records lying wholly in what is still decompressible)."""
    path = write_tfrecords(name, written, gzip=True)
    with open(path, "rb") as f:
        compressed = f.read()
    truncated = compressed[: int(len(compressed) * fraction)]
    with open(path, "wb") as f:
        f.write(truncated)
    readable = len(zlib.decompressobj(wbits=31).decompress(truncated))
    ends = np.cumsum([FRAMING_BYTES + len(r) for r in written])
    complete = int((ends <= readable).sum())
    assert 0 < complete < len(written)
    return path, complete


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_gzip_stream_is_fatal_after_readable_records(write_tfrecords, fraction):
    rng = np.random.default_rng(8)
    # random payloads (barely compressible), > 1 MiB uncompressed in all
    written = [rng.bytes(int(n)) for n in rng.integers(40_000, 80_000, 40)]
    path, complete = truncated_gzip_file(write_tfrecords, "big.tfrecord.gz", written, fraction)

    items = read_file(path)
    records, corruptions = split(items)
    assert 0 < len(records) <= complete  # readable records before the cut are returned
    assert [r.data for r in records] == written[: len(records)]
    assert_records_are_prefix(records, written)
    assert len(corruptions) == 1 and items[-1] is corruptions[0]
    c = corruptions[0]
    assert c.fatal
    assert "compressed stream unreadable" in c.reason or "truncated record" in c.reason
    assert c.index == len(records) and c.offset == offsets_of(written)[c.index]
    # conservation: records before + 1 corruption, and nothing yielded past the fatal one
    assert len(items) == c.index + 1


def test_truncated_small_gzip_returns_every_complete_record(write_tfrecords):
    rng = np.random.default_rng(8)
    written = [rng.bytes(1000) for _ in range(40)]
    path, complete = truncated_gzip_file(write_tfrecords, "small.tfrecord.gz", written, 0.75)

    records, corruptions = split(read_file(path))
    assert [r.data for r in records] == written[:complete]
    assert len(corruptions) == 1 and corruptions[0].fatal and corruptions[0].index == complete


def test_corrupt_deflate_data_is_a_fatal_corruption_not_a_crash():
    written = payloads(6, seed=9)
    compressor = zlib.compressobj(wbits=31)
    body = compressor.compress(b"".join(encode_record(r) for r in written))
    body += compressor.flush(zlib.Z_FULL_FLUSH)  # byte-aligned: the next byte starts a block
    corrupt = body + b"\x07" + b"\x00" * 64  # BFINAL=1, BTYPE=11: a reserved (invalid) block type
    stream = GzipRecoveringReader(io.BytesIO(corrupt))  # as open_records_stream opens it

    items = list(read_records(stream))
    records, corruptions = split(items)
    # every record decompressed before the corrupt block comes back (GzipFile would lose them)
    assert [r.data for r in records] == written
    assert len(corruptions) == 1 and corruptions[0].fatal
    assert corruptions[0].index == len(written)
    assert "compressed stream unreadable" in corruptions[0].reason


def test_corrupt_byte_mid_gzip_keeps_every_record_before_it(tmp_path):
    # A large, compressible file with one byte flipped in the middle of the deflate stream:
    # GzipFile would lose up to 128 KiB of records decompressed just before it.
    written = [bytes([i % 7]) * 300 for i in range(3000)]
    body = gzip.compress(b"".join(encode_record(r) for r in written))
    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0xFF
    with open_records_stream_from_bytes(tmp_path, bytes(damaged)) as stream:
        items = list(read_records(stream))
    records, corruptions = split(items)
    assert all(r.data == written[r.index] for r in records)
    assert corruptions and corruptions[-1].fatal
    # conservation: every index up to the fatal corruption is a record or a corruption
    assert [i.index for i in items] == list(range(len(items)))
    # the reference: the complete records a byte-exact decompression recovers before the damage
    decompressor, recovered = zlib.decompressobj(16 + zlib.MAX_WBITS), bytearray()
    for i in range(len(damaged)):
        try:
            recovered += decompressor.decompress(bytes(damaged[i:i + 1]))
        except zlib.error:
            break
    intact = 0
    while recovered[intact * 316:(intact + 1) * 316] == encode_record(written[intact]):
        intact += 1
    assert len([r for r in records if r.index < intact]) == intact  # none lost before the damage


def open_records_stream_from_bytes(tmp_path, data):
    path = tmp_path / "damaged.tfrecord.gz"
    path.write_bytes(data)
    return open_records_stream(str(path))
