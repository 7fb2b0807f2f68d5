"""Parquet files split by row group: the footer -> read units (pure), each unit read on its own
with the rows numbered as in the whole file, and the real job on the DirectRunner giving the same
keys, sources and dead letters however the files are split (ROWS_PER_UNIT lowered so that small
files split). Every row is one prediction or one dead letter; a corrupt row group and a file that
is not Parquet are each one read dead letter."""

import base64
import glob
import json
import os
import random

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.serving.feature_spec import Feature
from tests.helpers import read_jsonl
from tests.test_batch_infer import penguin_values
from tests.test_parquet_input import by_key, run_job, write_parquet
from transforms.sources import parquet
from transforms.sources.parquet import (ReadKeyedParquet, ReadUnit, file_read_units, iter_parquet_rows,
                                        read_units)
from transforms.sources.text import InstanceOptions

WHOLE_FILE = 10 ** 9  # a unit size no test file reaches: every file is one unit, as before splitting


def test_row_groups_are_gathered_into_units_of_at_least_the_target_rows():
    # groups of 7 rows, 10 rows a unit: two groups (14 rows) close a unit; the last 2 rows are one
    assert read_units("f", "n", [7, 7, 7, 7, 2], 10) == [
        ReadUnit("f", "n", 0, 2, 0), ReadUnit("f", "n", 2, 2, 14), ReadUnit("f", "n", 4, 1, 28)]
    assert read_units("f", "n", [7, 7, 7, 7, 2], 1) == [
        ReadUnit("f", "n", g, 1, 7 * g) for g in range(5)]  # each group its own unit
    assert read_units("f", "n", [7, 7, 7, 7, 2], WHOLE_FILE) == [ReadUnit("f", "n", 0, 5, 0)]  # a small file
    assert read_units("f", "n", [100, 3, 3, 3], 5) == [  # a group over the target is a unit alone
        ReadUnit("f", "n", 0, 1, 0), ReadUnit("f", "n", 1, 2, 100), ReadUnit("f", "n", 3, 1, 106)]
    assert read_units("f", "n", [0, 4, 0], 4) == [ReadUnit("f", "n", 0, 2, 0), ReadUnit("f", "n", 2, 1, 4)]
    assert read_units("f", "n", [], 10) == []  # no row groups, nothing to read


def test_units_cover_every_row_group_once_in_order_and_no_unit_is_larger_than_it_needs():
    rng = random.Random(3)
    for _ in range(300):
        groups = [rng.choice([0, 1, 5, 50, 1000]) for _ in range(rng.randint(1, 12))]
        target = rng.choice([1, 10, 100, 5000])
        units = read_units("f", "n", groups, target)
        covered = [g for u in units for g in range(u.first_group, u.first_group + u.group_count)]
        assert covered == list(range(len(groups)))
        for i, u in enumerate(units):
            assert u.first_row == sum(groups[:u.first_group])
            rows = groups[u.first_group:u.first_group + u.group_count]
            if i < len(units) - 1:
                assert sum(rows) >= target > sum(rows[:-1])  # closed at the first group that reached it
            else:
                assert sum(rows[:-1]) < target  # the rest


def test_a_files_units_come_from_its_footer_and_an_unreadable_file_is_one_whole_unit(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", penguin_values(30, seed=21), row_group_size=7)
    assert [pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(5)] == [7, 7, 7, 7, 2]
    assert file_read_units((path, "a.parquet"), 10) == [
        ReadUnit(path, "a.parquet", 0, 2, 0), ReadUnit(path, "a.parquet", 2, 2, 14),
        ReadUnit(path, "a.parquet", 4, 1, 28)]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + os.urandom(200))
    assert file_read_units((str(broken), "b"), 10) == [ReadUnit(str(broken), "b", 0, None, 0)]
    gone = str(tmp_path / "gone.parquet")
    assert file_read_units((gone, "g"), 10) == [ReadUnit(gone, "g", 0, None, 0)]


def test_reading_the_units_one_by_one_gives_the_rows_of_the_whole_file_numbered_as_in_it(tmp_path):
    values = penguin_values(30, seed=22)
    path = write_parquet(tmp_path / "a.parquet", values, row_group_size=7)
    whole = list(iter_parquet_rows(path))
    assert [row for row, _ in whole] == list(range(30)) and [i["id"] for _, i in whole] == [v["id"] for v in values]
    pieces = []
    for unit in file_read_units((path, "a.parquet"), 10):
        rows = list(iter_parquet_rows(path, row_groups=range(unit.first_group, unit.first_group + unit.group_count),
                                      first_row=unit.first_row))
        assert len(rows) == sum(min(7, 30 - 7 * g) for g in range(unit.first_group,
                                                                  unit.first_group + unit.group_count))
        pieces += rows
    assert pieces == whole


def test_a_unit_that_no_longer_matches_its_file_is_a_read_dead_letter(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", penguin_values(10, seed=23), row_group_size=5)  # 2 groups
    (item,) = list(iter_parquet_rows(path, row_groups=range(2, 4), first_row=10))  # split when it had 4
    assert item[0] == 10 and isinstance(item[1], parquet.UnreadableRows)
    assert "row groups changed after it was split" in item[1].reason
    (item,) = list(iter_parquet_rows(path, row_groups=range(1, 2), first_row=3))  # its first row moved
    assert isinstance(item[1], parquet.UnreadableRows)


def read_source(patterns, out, unit_rows):
    """ReadKeyedParquet alone on the DirectRunner: (chunk sizes, [(key, source, example)], dead letters).
    A variable-length feature keeps every batch off the columnar path: rows are gathered one by
    one into chunks of up to 1024, so a chunk is as long as the rows its unit read."""
    options = InstanceOptions((Feature("measurements", "float32", varlen=True), Feature("island", "int64")))
    with beam.Pipeline() as p:
        chunks, dead = p | ReadKeyedParquet(patterns, options, unit_rows=unit_rows)
        chunks | "Sizes" >> beam.Map(lambda c: str(len(c.keys))) | "WriteSizes" >> beam.io.WriteToText(out + "-sizes")
        (chunks
         | "Records" >> beam.FlatMap(lambda c: [json.dumps([k, dict(c.source(i)), base64.b64encode(r).decode()])
                                                for i, (k, r) in enumerate(zip(c.keys, c.records))])
         | "WriteRecords" >> beam.io.WriteToText(out + "-records"))
        dead | "Dead" >> beam.Map(json.dumps, default=str) | "WriteDead" >> beam.io.WriteToText(out + "-dead")
    sizes = sorted(int(line) for line in read_lines(out + "-sizes"))
    records = sorted(tuple(json.dumps(x, sort_keys=True) for x in json.loads(line))
                     for line in read_lines(out + "-records"))
    dead = sorted(json.dumps({k: d[k] for k in ("key", "stage", "source")}, sort_keys=True)
                  for d in map(json.loads, read_lines(out + "-dead")))
    return sizes, records, dead


def read_lines(prefix):
    return [line for path in sorted(glob.glob(prefix + "-*")) for line in open(path).read().splitlines()]


def test_the_source_reads_each_unit_on_its_own_and_gives_what_unsplit_reading_gives(tmp_path):
    values = penguin_values(40, seed=24)
    values[13]["island"] = None  # a required feature missing: a convert dead letter in the second unit
    os.makedirs(tmp_path / "in")
    write_parquet(tmp_path / "in" / "a.parquet", values, row_group_size=5, measurements_type=pa.list_(pa.float64()))
    (tmp_path / "in" / "broken.parquet").write_bytes(b"PAR1" + os.urandom(100))
    pattern = [str(tmp_path / "in" / "*.parquet")]
    split = read_source(pattern, str(tmp_path / "split"), unit_rows=10)
    whole = read_source(pattern, str(tmp_path / "whole"), unit_rows=WHOLE_FILE)
    assert whole[0] == [39]  # one file, one chunk
    assert split[0] == [9, 10, 10, 10]  # four units of two row groups, chunks never across two
    assert split[1] == whole[1] and len(split[1]) == 39
    assert split[2] == whole[2] and len(split[2]) == 2  # the row without an island and the file that is not Parquet
    keys = sorted(json.loads(r[0]) for r in split[1])
    assert keys == sorted(f"a.parquet:{i}" for i in range(40) if i != 13)


@pytest.fixture
def unit_rows(monkeypatch):
    """unit_rows(n): the job's Parquet files are split into units of n rows from now on."""
    return lambda n: monkeypatch.setattr(parquet, "ROWS_PER_UNIT", n)


def test_a_split_job_scores_every_row_once_with_the_keys_and_sources_of_an_unsplit_one(
        penguin_model, tmp_path, unit_rows):
    version_dir, _ = penguin_model
    values = penguin_values(60, seed=25)
    for i in (4, 31, 58):  # no key: a convert dead letter keyed by its position
        del values[i]["id"]
    values[17]["island"] = None  # a required feature missing: a convert dead letter
    os.makedirs(tmp_path / "in")
    a, b, c = (str(tmp_path / "in" / f"{n}.parquet") for n in "abc")
    write_parquet(a, values[:45], row_group_size=4)  # rows 0..44 of the values
    write_parquet(b, values[45:], row_group_size=6)  # rows 45..59, rows 0..14 of b
    with open(c, "wb") as f:
        f.write(b"not parquet at all")
    jobs = {}
    for label, rows in (("split", 8), ("whole", WHOLE_FILE)):
        unit_rows(rows)
        out = str(tmp_path / label / "pred")
        counters = run_job("--input", str(tmp_path / "in" / "*.parquet"), "--model", version_dir, "--output", out,
                           "--key_feature", "id", "--with_source", "--max_dead_letter_fraction", "1")
        predictions = read_jsonl(out + "-*.jsonl")
        dead = read_jsonl(out + ".errors-*.jsonl")
        assert len({p["key"] for p in predictions}) == len(predictions)  # no row twice
        assert [d["error"] for d in dead if d["stage"] == "read"] == [
            d["error"] for d in dead if d["source"]["file"] == c]  # the file that is not Parquet: one
        # conservation: every row read is one prediction or one dead letter (the read one is no row)
        assert counters["records_read"] == len(values) == len(predictions) + len(dead) - 1
        jobs[label] = ({p["key"]: p["source"] for p in predictions},
                       {d["key"]: (d["stage"], d["source"]) for d in dead})
    assert jobs["split"] == jobs["whole"]
    sources, dead = jobs["split"]
    assert sources == {v["id"]: {"file": a, "row": i} if i < 45 else {"file": b, "row": i - 45}
                       for i, v in enumerate(values) if i not in (4, 17, 31, 58)}
    assert dead == {"a.parquet:4": ("convert", {"file": a, "row": 4}),
                    "a.parquet:31": ("convert", {"file": a, "row": 31}),
                    "b.parquet:13": ("convert", {"file": b, "row": 13}),
                    "p17": ("convert", {"file": a, "row": 17}),
                    "c.parquet:0": ("read", {"file": c, "row": 0, "rows_skipped": None})}


def corrupt_row_group(path, group):
    """Overwrites the measurements column chunk of one row group with 0xff bytes."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(1)
    data = bytearray(open(path, "rb").read())
    start = column.dictionary_page_offset or column.data_page_offset  # the column chunk's first byte
    data[start:start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    with open(path, "wb") as f:
        f.write(data)


def test_a_corrupt_row_group_of_a_split_file_is_its_read_dead_letter_and_the_other_units_are_read(
        penguin_model, tmp_path, unit_rows):
    version_dir, _ = penguin_model
    values = penguin_values(40, seed=26)
    path = write_parquet(tmp_path / "in.parquet", values, row_group_size=5)
    corrupt_row_group(path, 3)  # rows 15..19: the second row group of the second unit
    unit_rows(10)
    out = str(tmp_path / "out" / "pred")
    counters = run_job("--input", path, "--model", version_dir, "--output", out, "--key_feature", "id",
                       "--max_dead_letter_fraction", "1")
    (read,) = read_jsonl(out + ".errors-*.jsonl")
    assert read["stage"] == "read" and read["source"] == {"file": path, "row": 15, "rows_skipped": 5}
    assert "row group 3" in read["error"]
    assert sorted(by_key(out)) == sorted(v["id"] for v in values[:15] + values[20:])
    assert counters["records_read"] == 35 and counters["unreadable_regions"] == 1
