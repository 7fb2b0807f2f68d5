"""iter_chunks (tf.data fast path + framing-reader fallback) must see exactly what read_records sees."""

import gzip

import numpy as np
import pytest

from transforms.sources.framing import Corruption, Record, encode_record
from transforms.sources.tfrecord import iter_chunks, open_records_stream
from transforms.sources.framing import read_records


def reference(path):
    """The framing reader's view: records by index, corruptions by (index, offset, fatal)."""
    with open_records_stream(path) as stream:
        items = list(read_records(stream))
    return ({i.index: i.data for i in items if isinstance(i, Record)},
            [(i.index, i.offset, i.fatal) for i in items if isinstance(i, Corruption)])


def chunked(path, chunk_size):
    records, corruptions, chunk_sizes = {}, [], []
    for item in iter_chunks(path, chunk_size):
        if isinstance(item, Corruption):
            corruptions.append((item.index, item.offset, item.fatal))
            continue
        first, batch = item
        chunk_sizes.append(len(batch))
        for i, data in enumerate(batch):
            assert first + i not in records, "a record was emitted twice"
            records[first + i] = data
    return records, corruptions, chunk_sizes


def body_of(payloads):
    return b"".join(encode_record(p) for p in payloads)


def corrupt(kind, payloads):
    body = bytearray(body_of(payloads))
    third = len(body_of(payloads[:len(payloads) // 3]))
    if kind == "clean":
        pass
    elif kind == "partial-header-tail":  # TensorFlow alone would end here quietly
        body += encode_record(b"tail")[:5]
    elif kind == "truncated-data-tail":
        body += encode_record(b"tail" * 10)[:-6]
    elif kind == "data-crc-mid-file":  # one record spoilt, reading goes on
        body[third + 12 + 1] ^= 0xFF
    elif kind == "length-crc-mid-file":  # framing lost from here on
        body[third + 2] ^= 0xFF
    return bytes(body)


KINDS = ["clean", "partial-header-tail", "truncated-data-tail", "data-crc-mid-file", "length-crc-mid-file"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("kind", KINDS)
def test_chunks_match_the_framing_reader(tmp_path, kind, gz):
    rng = np.random.default_rng(3)
    payloads = [rng.bytes(int(rng.integers(1, 300))) for _ in range(50)]
    path = str(tmp_path / ("f.tfrecord.gz" if gz else "f.tfrecord"))
    data = corrupt(kind, payloads)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    expected_records, expected_corruptions = reference(path)
    records, corruptions, sizes = chunked(path, chunk_size=8)
    assert records == expected_records
    assert corruptions == expected_corruptions
    assert all(size <= 8 for size in sizes)
    if kind == "clean":
        assert corruptions == [] and len(records) == 50
    else:
        assert len(corruptions) == 1  # every kind here damages exactly one place
    # conservation: every index up to the last one seen is a record or the corruption
    seen = set(records) | {c[0] for c in corruptions}
    assert seen == set(range(max(seen) + 1))


def test_empty_file_gives_nothing(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert list(iter_chunks(str(path), 4)) == []


def test_split_by_bytes_caps_input_bytes_and_keeps_order():
    from transforms.sources.tfrecord import split_by_bytes

    records = [b"x" * n for n in (10, 10, 10, 50, 5, 5, 5, 100, 1)]
    parts = list(split_by_bytes(records, 30))
    assert [offset for offset, _ in parts] == [0, 3, 4, 7, 8]
    assert [r for _, part in parts for r in part] == records  # nothing lost, order kept
    assert all(sum(map(len, part)) <= 30 or len(part) == 1 for _, part in parts)
    assert list(split_by_bytes(records, 10_000)) == [(0, records)]


def test_chunks_respect_the_byte_budget(tmp_path):
    path = str(tmp_path / "big.tfrecord")
    payloads = [bytes([i]) * 1000 for i in range(40)]
    with open(path, "wb") as f:
        f.write(body_of(payloads))
    items = list(iter_chunks(path, chunk_size=16, chunk_bytes=4000))
    assert [len(batch) for _, batch in items] == [4] * 10
    assert [first for first, _ in items] == list(range(0, 40, 4))
    assert [r for _, batch in items for r in batch] == payloads
