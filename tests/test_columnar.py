"""The columnar hot path, without a pipeline: a chunk's records converted once to one string
tensor, keys read for the whole chunk, and a chunk's JSON Lines built column by column."""

import json
import pickle
import random

import numpy as np
import pytest

from models.serving.examples import make_example
from transforms.records.chunk import ModelResult, split_by_bytes
from transforms.records.keys import keys_by_feature, texts
from transforms.records.rows import interleave, rows_block
from transforms.records.serialized import SerializedRecords, string_tensor
from transforms.sources.tfrecord import iter_chunks


def examples(n, key=lambda i: f"k{i}"):
    return [make_example({"id": key(i), "x": [float(i)] * (1 + i % 3)}).SerializeToString() for i in range(n)]


def test_serialized_records_build_their_tensor_once_and_read_as_bytes():
    records = examples(7)
    chunk = SerializedRecords(records)
    tensor = string_tensor(chunk)
    assert string_tensor(chunk) is tensor  # the key parse and every model call share it, no copy
    assert tensor.numpy().tolist() == records
    assert len(chunk) == 7 and chunk[3] == records[3] and list(chunk) == records
    assert chunk.byte_lengths().tolist() == [len(r) for r in records]
    assert list(chunk.sliced(2, 5)) == records[2:5]
    copied = pickle.loads(pickle.dumps(chunk))  # how Beam moves it between stages and workers
    assert list(copied) == records and string_tensor(copied).numpy().tolist() == records


def test_chunks_cut_by_bytes_stay_serialized_records_and_cover_every_record():
    records = examples(50)
    limit = sum(map(len, records)) // 4
    parts = list(split_by_bytes(SerializedRecords(records), limit))
    assert len(parts) >= 4
    assert all(isinstance(part, SerializedRecords) for _, part in parts)
    assert [r for _, part in parts for r in part] == records
    assert [offset for offset, _ in parts] == np.cumsum([0] + [len(p) for _, p in parts[:-1]]).tolist()
    assert all(sum(map(len, part)) <= limit for _, part in parts)


def test_the_byte_cap_cuts_whole_multiples_of_the_batch_quantum():
    from transforms.records.chunk import BATCH_QUANTUM

    records = [bytes(10)] * 100
    parts = list(split_by_bytes(records, 295))  # 29 records fit: slices of 24, then the 28 left
    assert [len(part) for _, part in parts] == [24, 24, 24, 28] and BATCH_QUANTUM == 8
    assert [offset for offset, _ in parts] == [0, 24, 48, 72]
    few = list(split_by_bytes([bytes(100)] * 10, 350))  # 3 fit: fewer than the quantum, cut as they fit
    assert [len(part) for _, part in few] == [3, 3, 3, 1]
    varied = [bytes(n) for n in np.random.default_rng(1).integers(5, 40, size=300).tolist()]
    cuts = list(split_by_bytes(varied, 400))
    assert [r for _, part in cuts for r in part] == varied
    assert all(len(part) % BATCH_QUANTUM == 0 for _, part in cuts[:-1] if len(part) > BATCH_QUANTUM)
    assert all(sum(map(len, part)) <= 400 for _, part in cuts)


def test_keys_read_for_the_whole_chunk_or_none():
    assert keys_by_feature(SerializedRecords(examples(5)), "id") == [f"k{i}" for i in range(5)]
    assert keys_by_feature(examples(3, key=lambda i: 100 + i), "id") == ["100", "101", "102"]
    assert keys_by_feature(examples(3, key=lambda i: ["a\0b", "ü", ""][i]), "id") == ["a\0b", "ü", ""]
    assert keys_by_feature(examples(3, key=lambda i: b"\xff" if i == 1 else "ok"), "id") is None  # not UTF-8
    assert keys_by_feature(examples(3), "missing") is None
    assert keys_by_feature(examples(3) + [b"not an example"], "id") is None
    assert texts([b"a", b"b\0c"]) == ["a", "b\0c"]


def test_interleave_matches_row_by_row_concatenation():
    rng = random.Random(4)
    for count in (0, 1, 5):
        pieces = []
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.5:
                pieces.append(rng.choice(["", "{", '","', "x"]))
            else:
                pieces.append([f"c{rng.randint(0, 99)}" for _ in range(count)])
        expected = "\n".join("".join(p if isinstance(p, str) else p[i] for p in pieces) for i in range(count))
        assert interleave(pieces, count) == expected


def test_graph_rows_built_by_columns_read_as_the_rows_they_stand_for():
    keys = ["a", 'q"uote', "c", "d"]
    first = {"p": np.float32([[0.25, 0.5], [1, 2], [3, 4], [5, 6]]), "n": np.int64([1, 2, 3, 4])}
    second = {"label": np.array([b"x", b"\xff", b"z", b"w"], dtype=object), "s": np.float32([np.nan, 1, 2, 3])}
    sources = [{"file": "f", "record": i} for i in range(4)]
    records = [make_example({"id": k, "v": [i, i + 1]}).SerializeToString() for i, k in enumerate(keys)]
    text, count = rows_block(keys, {"m1": ModelResult([0, 1, 2, 3], first), "m2": ModelResult([0, 1, 2, 3], second)},
                             records, ["v"], {"v": False}, sources=sources)
    rows = [json.loads(line) for line in text.split("\n")]
    assert count == 4 and [r["key"] for r in rows] == keys
    assert rows[1] == {"key": 'q"uote', "m1": {"n": 2, "p": [1.0, 2.0]}, "m2": {"label": {"b64": "/w=="}, "s": 1.0},
                       "source": {"file": "f", "record": 1}, "inputs": {"v": [1, 2]}}
    assert rows[0]["m2"]["s"] == "NaN" and rows[0]["m1"]["p"] == [0.25, 0.5]


def test_clean_tfrecord_chunks_come_as_serialized_records(write_tfrecords):
    records = examples(2500)
    path = write_tfrecords("clean.tfrecord", records)
    chunks = list(iter_chunks(path, 1024))
    assert [first for first, _ in chunks] == [0, 1024, 2048]
    assert all(isinstance(part, SerializedRecords) for _, part in chunks)
    assert [r for _, part in chunks for r in part] == records


@pytest.mark.parametrize("tail", [b"\x05\x00", b"garbage that is not a record header"])
def test_a_torn_tail_after_clean_chunks_keeps_every_record_before_it(write_tfrecords, tail):
    records = examples(1500)
    path = write_tfrecords("torn.tfrecord", records, tail=tail)
    items = list(iter_chunks(path, 1024))
    read = [r for item in items if isinstance(item, tuple) for r in item[1]]
    assert read == records
    assert [type(item).__name__ for item in items if not isinstance(item, tuple)] == ["Corruption"]
