"""Parquet inputs end to end (--input_format parquet, or by the .parquet suffix): files written by
pyarrow and pandas, scored by the real job on the DirectRunner with a model exported by
models.prepare and checked against the Keras model called directly. Every row is one prediction
or one dead letter; a file that is not Parquet is one read dead letter beside the good files."""

import base64
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.test_batch_infer import expected_outputs, penguin_values


def run_job(*args):
    return batch_infer.run(list(args), save_main_session=False)[1]


def write_parquet(path, values, row_group_size=None, measurements_type=None):
    """The values as a Parquet file written by pyarrow: measurements a fixed-size list of 4 doubles."""
    table = pa.table({
        "id": pa.array([v.get("id") for v in values], pa.string()),
        "measurements": pa.array([v.get("measurements") for v in values],
                                 measurements_type or pa.list_(pa.float64(), 4)),
        "island": pa.array([v.get("island") for v in values], pa.int64()),
    })
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)


def by_key(prefix):
    return {r["key"]: r for r in read_jsonl(prefix + "-*.jsonl")}


def check_predictions(rows, keras_model, values):
    expected = expected_outputs(keras_model, values)
    for i, v in enumerate(values):
        np.testing.assert_allclose(rows[v["id"]]["model"]["probabilities"], expected["probabilities"][i], rtol=1e-6)
        assert rows[v["id"]]["model"]["species"] == int(expected["species"][i])


def test_pyarrow_and_pandas_files_give_the_predictions_of_a_direct_call(penguin_model, tmp_path):
    import pandas as pd

    version_dir, keras_model = penguin_model
    values = penguin_values(50, seed=11)
    os.makedirs(tmp_path / "in")
    write_parquet(tmp_path / "in" / "a.parquet", values[:30], row_group_size=7)  # several row groups
    pd.DataFrame(values[30:]).to_parquet(tmp_path / "in" / "b.parquet")  # a list<double> column
    out = str(tmp_path / "out" / "pred")
    counters = run_job("--input", str(tmp_path / "in" / "*.parquet"), "--model", version_dir, "--output", out,
                       "--key_feature", "id")
    assert counters["records_read"] == 50 == counters["predictions_written"]
    rows = by_key(out)
    assert sorted(rows) == sorted(v["id"] for v in values)
    check_predictions(rows, keras_model, values)


def test_keys_default_to_file_and_row_and_extras_pass_through(penguin_model, tmp_path):
    version_dir, keras_model = penguin_model
    values = penguin_values(3, seed=12)
    table = pa.table({"measurements": [v["measurements"] for v in values], "island": [v["island"] for v in values],
                      "note": [f"n{i}" for i in range(3)], "raw": [b"\x00\xff", None, b"x"]})
    path = tmp_path / "data"  # no suffix: its first bytes say Parquet
    pq.write_table(table, str(path))
    out = str(tmp_path / "out" / "pred")
    run_job("--input", str(path), "--model", version_dir, "--output", out, "--passthrough", "note", "--with_source")
    rows = by_key(out)
    assert set(rows) == {"data:0", "data:1", "data:2"}
    assert rows["data:1"]["inputs"] == {"note": "n1"}
    assert rows["data:2"]["source"] == {"file": str(path), "row": 2}
    check_predictions({f"data:{i}": rows[f"data:{i}"] for i in range(3)}, keras_model,
                      [dict(v, id=f"data:{i}") for i, v in enumerate(values)])


def test_bad_rows_are_dead_letters_with_their_row_and_every_row_is_counted(penguin_model, tmp_path):
    version_dir, keras_model = penguin_model
    good = penguin_values(20, seed=13)
    rows = list(good)
    rows.insert(3, {"id": "short", "measurements": [1.0, 2.0], "island": 1})       # 2 values, not 4
    rows.insert(8, {"id": "nullisland", "measurements": [1.0, 2.0, 3.0, 4.0], "island": None})  # required
    rows.insert(12, {"measurements": [1.0, 2.0, 3.0, 4.0], "island": 1})           # no key
    rows.insert(15, {"id": "nan", "measurements": [1.0, None, 3.0, 4.0], "island": 2})  # a null in the list
    path = write_parquet(tmp_path / "in.parquet", rows, row_group_size=5, measurements_type=pa.list_(pa.float64()))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + os.urandom(200))  # Parquet's magic, then no Parquet
    out = str(tmp_path / "out" / "pred")
    counters = run_job("--input", path, "--input", str(broken), "--model", version_dir, "--output", out,
                       "--key_feature", "id", "--max_dead_letter_fraction", "1")
    dead = read_jsonl(out + ".errors-*.jsonl")
    by_row = {d["source"].get("row"): d for d in dead if d["source"]["file"] == path}
    assert set(by_row) == {3, 8, 12, 15} and all(d["stage"] == "convert" for d in by_row.values())
    assert by_row[3]["key"] == "short" and "row 3: 'measurements': has 2 values" in by_row[3]["error"]
    assert "island" in by_row[8]["error"]
    assert by_row[12]["key"] == "in.parquet:12" and "key field 'id' is missing" in by_row[12]["error"]
    assert json.loads(base64.b64decode(by_row[3]["input_base64"])) == rows[3]
    (read,) = [d for d in dead if d["source"]["file"] == str(broken)]
    assert read["stage"] == "read" and "not a readable Parquet file" in read["error"]
    predictions = by_key(out)
    assert sorted(predictions) == sorted(v["id"] for v in good)
    check_predictions(predictions, keras_model, good)
    # conservation: every row of the good file is one prediction or one dead letter
    assert counters["records_read"] == len(rows) == len(predictions) + len(by_row)


def test_a_corrupt_row_group_is_one_read_dead_letter_and_the_others_are_read(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    values = penguin_values(30, seed=14)
    path = write_parquet(tmp_path / "in.parquet", values, row_group_size=10)
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(1).column(1)  # the second row group's measurements
    data = bytearray(open(path, "rb").read())
    start = column.dictionary_page_offset or column.data_page_offset  # the column chunk's first byte
    data[start:start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    with open(path, "wb") as f:
        f.write(data)
    out = str(tmp_path / "out" / "pred")
    counters = run_job("--input", path, "--model", version_dir, "--output", out, "--key_feature", "id",
                       "--max_dead_letter_fraction", "1")
    (read,) = read_jsonl(out + ".errors-*.jsonl")
    assert read["stage"] == "read" and read["source"] == {"file": path, "row": 10, "rows_skipped": 10}
    assert sorted(by_key(out)) == sorted(v["id"] for v in values[:10] + values[20:])
    assert counters["records_read"] == 20


def test_the_launcher_samples_parquet_rows_and_names_a_misspelt_key(penguin_model, tmp_path, capsys):
    version_dir, _ = penguin_model
    path = write_parquet(tmp_path / "in.parquet", penguin_values(30, seed=15))
    args = ["--input", path, "--model", version_dir, "--output", str(tmp_path / "pred")]
    assert batch_infer.main(args + ["--key_feature", "idd"]) == 2
    err = capsys.readouterr().err
    assert "none of the 20 records sampled" in err and "did you mean --key_feature id?" in err
    assert batch_infer.main(args + ["--input_format", "jsonl"]) == 2
    err = capsys.readouterr().err
    assert "looks like Parquet" in err and "pass --input_format parquet" in err
    text = tmp_path / "text.parquet"
    text.write_text('{"id": "a"}\n')
    assert batch_infer.main(["--input", str(text), "--model", version_dir, "--output", str(tmp_path / "p2")]) == 2
    assert "is read as parquet, but it looks like JSON Lines" in capsys.readouterr().err


def test_timestamps_dates_decimals_and_defaults_convert_as_the_instance_rules_say(tmp_path):
    import datetime
    import decimal

    import pandas as pd
    import tensorflow as tf

    from models.serving.feature_spec import Feature
    from transforms.sources.parquet import iter_parquet_rows, keyed_row
    from transforms.sources.text import InstanceOptions

    when = datetime.datetime(2024, 3, 1, 12, 30, tzinfo=datetime.timezone.utc)
    pd.DataFrame({"t": [pd.Timestamp(when), pd.Timestamp(when)], "d": [datetime.date(2024, 3, 1)] * 2,
                  "price": [decimal.Decimal("1.25"), decimal.Decimal("2.50")], "opt": [None, 4],
                  "meta": [{"a": 1}, {"a": 2}]}).to_parquet(tmp_path / "t.parquet")
    spec = (Feature("t", "float32"), Feature("d", "string"), Feature("price", "float32"),
            Feature("opt", "int64", default=9))
    options = InstanceOptions(spec, keep_extra=True)
    examples = [tf.train.Example.FromString(keyed_row("p", "p", row, item, options)[1])
                for row, item in iter_parquet_rows(str(tmp_path / "t.parquet"))]
    features = [e.features.feature for e in examples]
    assert features[0]["t"].float_list.value[0] == np.float32(when.timestamp())
    assert features[0]["d"].bytes_list.value == [b"2024-03-01"]
    assert list(features[1]["price"].float_list.value) == [2.5]
    assert "opt" not in features[0] and list(features[1]["opt"].int64_list.value) == [4]  # null: the default fills it
    assert "meta" not in features[0]  # a struct is no feature
