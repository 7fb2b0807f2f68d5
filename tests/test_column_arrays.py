"""Arrow record batches -> feature arrays in bulk (transforms.sources.columnar), against the rules
every row-shaped source converts by: a batch taken in bulk must give, for every row, exactly the
values that converting the row (InstanceOptions.convert) and parsing its tf.Example would give,
and no row of it may be one the per-row rules refuse. Random tables of near-misses (nulls, lists
of other lengths, overflows, wrong types, empty keys) check that; hand-made ones that the bulk
path takes what it should. Then the arrays through a dense signature (TensorInputs.from_arrays)
against parsing, and ColumnRecords' lazy tf.Examples."""

import pickle

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from models.serving.dense import TensorInputs, tensor_parse_config
from models.serving.feature_spec import Feature
from transforms.records.chunk import split_by_bytes
from transforms.records.columns import ColumnRecords
from transforms.sources.columnar import clean_block, feature_array
from transforms.sources.instances import ConversionError
from transforms.sources.text import InstanceOptions


def parsed(examples, spec):
    out = tf.io.parse_example(tf.constant(examples), tensor_parse_config(spec))
    return {name: value.numpy() for name, value in out.items()}


def assert_same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(a, b)  # NaN == NaN here
    else:
        assert a.tolist() == b.tolist()


def per_row(batch, options):
    results = []
    for row in batch.to_pylist():
        try:
            results.append(options.convert(row))
        except ConversionError as e:
            results.append(e)
    return results


# (feature, a column generator: rng, n, broken -> pa.Array)
def _numbers(rng, n, size, kind, broken):
    if kind == "int":
        values = rng.integers(-1000, 1000, size=(n, size))
        arrow = rng.choice([pa.int8(), pa.int32(), pa.int64(), pa.uint64(), pa.bool_()])
        if arrow == pa.bool_():
            values = values > 0
        elif arrow == pa.int8():
            values = values % 100
        elif arrow == pa.uint64():
            values = np.abs(values).astype(np.uint64)
            if broken == "overflow":
                values[rng.integers(n)] = np.uint64(1 << 63) + np.uint64(5)
    else:
        values = rng.normal(size=(n, size)) * 10
        arrow = rng.choice([pa.float32(), pa.float64(), pa.int64()])
        if arrow == pa.int64():
            values = np.round(values).astype(np.int64)
        elif broken == "overflow" and arrow == pa.float64():
            values[rng.integers(n)] = 1e39
        if arrow != pa.int64() and rng.random() < 0.3:
            values[rng.integers(n)] = np.nan
    return values, arrow


def random_column(rng, feature: Feature, n: int, broken: str):
    if feature.encoding == "raw":
        values = [rng.integers(0, 256, size=feature.raw_nbytes, dtype=np.uint8).tobytes() for _ in range(n)]
        if broken == "length":
            values[rng.integers(n)] = b"\x00" * (feature.raw_nbytes - 1)
        column = pa.array(values, rng.choice([pa.binary(), pa.large_binary()]))
    elif feature.dtype == "string":
        values = np.array([[f"w{rng.integers(100)}" * int(rng.integers(0, 3)) for _ in range(feature.size)]
                           for _ in range(n)], dtype=object)
        arrow = rng.choice([pa.string(), pa.binary(), pa.large_string()])
        if arrow == pa.binary():
            values = np.vectorize(lambda s: s.encode())(values).astype(object)
        column = _shaped(values, arrow, feature, rng, broken)
    else:
        values, arrow = _numbers(rng, n, feature.size, "int" if feature.dtype == "int64" else "float", broken)
        if broken == "type" and feature.dtype == "int64" and arrow != pa.bool_():
            values, arrow = values.astype(np.float64) + 0.5, pa.float64()
        column = _shaped(values, arrow, feature, rng, broken)
    if broken == "null":
        mask = np.zeros(n, bool)
        mask[rng.integers(n)] = True
        column = pa.array(column.to_pylist(), column.type, mask=mask)
    return column


def _shaped(values, arrow, feature, rng, broken):
    rows = [list(row) for row in values]
    if broken == "length" and len(rows[0]) > 1:
        rows[rng.integers(len(rows))] = rows[0][:-1]
    if feature.size == 1 and broken != "length" and rng.random() < 0.5:
        return pa.array([row[0] for row in rows], arrow)  # a plain column for a one-value feature
    if rng.random() < 0.5 and broken != "length":
        return pa.array(rows, pa.list_(arrow, feature.size))  # fixed-size list
    if len(feature.shape) == 2 and rng.random() < 0.5:  # nested lists, one per matrix row
        a, b = feature.shape
        return pa.array([[row[i * b:(i + 1) * b] for i in range(a)] for row in rows], pa.list_(pa.list_(arrow)))
    return pa.array(rows, pa.list_(arrow))


FEATURES = [
    Feature("f", "float32", (3,)), Feature("s", "float32"), Feature("one", "float32", (1,)),
    Feature("m", "float32", (2, 2)), Feature("i", "int64", (2,)), Feature("c", "int64"),
    Feature("w", "string"), Feature("ws", "string", (2,)),
    Feature("img", "string", (2, 2), model_dtype="uint8", encoding="raw"),
]
BROKEN = ["none", "none", "none", "null", "length", "overflow", "type"]


def random_batch(rng):
    n = int(rng.integers(1, 12))
    spec = tuple(rng.choice(FEATURES, size=int(rng.integers(1, 4)), replace=False))
    columns, brokens = {}, []
    for feature in spec:
        broken = rng.choice(BROKEN)
        brokens.append(broken)
        columns[feature.name] = random_column(rng, feature, n, broken)
    key_field = None
    if rng.random() < 0.5:
        key_field = "id"
        keys = [f"k{i}" for i in range(n)] if rng.random() < 0.7 else list(range(n))
        if rng.random() < 0.15:
            keys[rng.integers(n)] = "" if isinstance(keys[0], str) else None
        columns["id"] = pa.array(keys)
    if rng.random() < 0.5:  # extras: kept in the example (passthrough) when they convert
        extra = rng.choice(["note", "big", "flags", "nested"])
        columns[extra] = {"note": lambda: pa.array([f"n{i}" for i in range(n)]),
                          "big": lambda: pa.array(rng.normal(size=n) * (1e39 if rng.random() < 0.3 else 1)),
                          "flags": lambda: pa.array([[True, False]] * n),
                          "nested": lambda: pa.array([{"a": 1}] * n)}[extra]()
    options = InstanceOptions(spec, key_field=key_field, keep_key=bool(rng.random() < 0.3))
    return pa.RecordBatch.from_pydict(columns), options, brokens


def test_a_batch_taken_in_bulk_gives_each_row_what_the_per_row_rules_give():
    rng = np.random.default_rng(7)
    bulk = refused = 0
    for _ in range(400):
        batch, options, _ = random_batch(rng)
        block = clean_block(batch, options)
        rows = per_row(batch, options)
        if block is None:
            refused += 1
            continue
        bulk += 1
        assert not any(isinstance(r, ConversionError) for r in rows), rows
        keys, arrays = block
        if options.key_field:  # a row without a usable key is keyed by its position: never in bulk
            assert keys == [options.key_or_none(row) or "<position>" for row in batch.to_pylist()]
        else:
            assert keys is None
        expected = parsed(rows, options.spec)
        assert set(arrays) == {f.name for f in options.spec}
        for name, array in arrays.items():
            assert_same(array, expected[name])
    assert bulk > 80 and refused > 80, (bulk, refused)


@pytest.mark.parametrize("column, feature", [
    (pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float64(), 3)), Feature("f", "float32", (3,))),
    (pa.array([[1, 2, 3], [4, 5, 6]]), Feature("f", "float32", (3,))),
    (pa.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]]), Feature("m", "int64", (2, 2))),
    (pa.array([1, 2], pa.uint32()), Feature("c", "int64")),
    (pa.array([True, False]), Feature("c", "float32", (1,))),
    (pa.array(["a", "b"]), Feature("w", "string")),
    (pa.array([b"\x01\x02", b"\x03\x04"], pa.binary(2)), Feature("r", "string", (2,), "uint8", encoding="raw")),
])
def test_columns_that_fit_are_taken_in_bulk(column, feature):
    array = feature_array(column, feature)
    assert array is not None
    examples = per_row(pa.RecordBatch.from_pydict({feature.name: column}), InstanceOptions((feature,)))
    assert_same(array, parsed(examples, (feature,))[feature.name])


@pytest.mark.parametrize("column, feature", [
    (pa.array([[1.0, 2.0], [3.0]]), Feature("f", "float32", (2,))),  # a short list: that row's dead letter
    (pa.array([1.5, 2.0]), Feature("c", "int64")),  # a fraction for an integer feature
    (pa.array([1.0, None]), Feature("s", "float32", default=0.0)),  # a null: the default fills that row
    (pa.array(["NaN", "1"]), Feature("s", "float32")),  # text numbers: read row by row
    (pa.array([b"\x01"], pa.binary()), Feature("r", "string", (2,), "uint8", encoding="raw")),  # short bytes
    (pa.array(["ab"]), Feature("r", "string", (2,), "uint8", encoding="raw")),  # text for raw bytes
    (pa.array([[1, 2]]), Feature("v", "int64", varlen=True)),  # variable length: row by row
])
def test_columns_the_per_row_rules_must_read_are_not_taken_in_bulk(column, feature):
    assert feature_array(column, feature) is None


def test_a_missing_feature_or_an_empty_key_sends_the_batch_row_by_row():
    spec = (Feature("s", "float32"),)
    assert clean_block(pa.RecordBatch.from_pydict({"t": [1.0]}), InstanceOptions(spec)) is None
    batch = pa.RecordBatch.from_pydict({"s": [1.0, 2.0], "id": ["a", ""]})
    assert clean_block(batch, InstanceOptions(spec, key_field="id")) is None  # "" is position-keyed
    keys, _ = clean_block(pa.RecordBatch.from_pydict({"s": [1.0], "id": [7]}), InstanceOptions(spec, key_field="id"))
    assert keys == ["7"]


def test_from_arrays_feeds_a_signature_what_parsing_feeds_it():
    spec = (Feature("x", "float32", (2,), model_dtype="float16"), Feature("b", "int64", model_dtype="bool"),
            Feature("img", "string", (2, 2), model_dtype="uint8", encoding="raw"), Feature("w", "string"))
    batch = pa.RecordBatch.from_pydict({
        "x": pa.array([[1.5, -2.25], [3.0, 0.1]], pa.list_(pa.float32(), 2)), "b": [0, 5],
        "img": pa.array([bytes(range(4)), bytes(range(4, 8))], pa.binary()), "w": ["a", "bc"]})
    options = InstanceOptions(spec)
    _, arrays = clean_block(batch, options)
    inputs = TensorInputs(spec, ["x", "b", "img", "w"])
    from_arrays = inputs.from_arrays(arrays)
    from_parse = {k: v.numpy() for k, v in inputs.parse(tf.constant(per_row(batch, options))).items()}
    assert set(from_arrays) == set(from_parse)
    for name in from_parse:
        assert_same(np.asarray(from_arrays[name]), from_parse[name])
    assert inputs.from_arrays({k: v for k, v in arrays.items() if k != "w"}) is None  # one missing: parse


def test_column_records_build_their_examples_once_and_only_when_asked():
    spec = (Feature("s", "float32"),)
    batch = pa.RecordBatch.from_pydict({"s": [1.0, 2.0, 3.0], "note": ["a", "b", "c"]})
    options = InstanceOptions(spec)
    _, arrays = clean_block(batch, options)
    records = ColumnRecords(batch, options, arrays)
    assert records.feature_arrays() is arrays and records._list is None  # the arrays, no example built
    assert list(records) == per_row(batch, options)
    assert records.examples() is records.examples()
    again = pickle.loads(pickle.dumps(records))
    assert list(again) == list(records)
    assert_same(again.feature_arrays()["s"], arrays["s"])
    parts = list(split_by_bytes(records, 8))  # 4 bytes a row: two rows a part
    assert [(offset, len(part)) for offset, part in parts] == [(0, 2), (2, 1)]
    assert all(isinstance(part, ColumnRecords) for _, part in parts)
    assert list(parts[1][1]) == per_row(batch, options)[2:]


ODD_VALUES = [None, True, False, 0, 1, -7, 1.0, 1.5, float("nan"), float("inf"), 1e39, 2 ** 63, -(2 ** 63), "3",
              "NaN", "", "word", [], [1], [1.5], [[1, 2]], {"b64": "AAE="}, {"k": 1}]


def random_value(rng, feature: Feature, broken: bool, nesting: float):
    """One instance's value; nesting (drawn once per column) picks plain, nested or flat lists."""
    if broken:
        return ODD_VALUES[rng.integers(len(ODD_VALUES))]
    if feature.dtype == "string":
        values = [f"w{rng.integers(10)}" for _ in range(feature.size)]
    elif feature.dtype == "int64":
        values = [int(v) for v in rng.integers(-50, 50, size=feature.size)]
    else:
        values = [float(v) if rng.random() < 0.8 else int(v) for v in rng.normal(size=feature.size) * 5]
    if not feature.shape and nesting < 0.7:
        return values[0]
    if len(feature.shape) == 2 and nesting < 0.5:
        a, b = feature.shape
        return [values[i * b:(i + 1) * b] for i in range(a)]
    return values


def random_instances(rng):
    n = int(rng.integers(1, 10))
    spec = tuple(f for f in rng.choice(FEATURES, size=int(rng.integers(1, 4)), replace=False) if f.encoding != "raw")
    spec = spec or (Feature("s", "float32"),)
    broken_row, broken_feature = (int(rng.integers(n)), int(rng.integers(len(spec)))) if rng.random() < 0.5 else (-1, -1)
    instances, nesting = [], {f.name: rng.random() for f in spec}
    for i in range(n):
        d = {f.name: random_value(rng, f, i == broken_row and j == broken_feature, nesting[f.name])
             for j, f in enumerate(spec)}
        if rng.random() < 0.1:
            d.pop(spec[0].name)
        instances.append(d)
    key_field = "id" if rng.random() < 0.5 else None
    if key_field:
        for i, d in enumerate(instances):
            d["id"] = f"k{i}" if rng.random() < 0.95 else ODD_VALUES[rng.integers(len(ODD_VALUES))]
    if rng.random() < 0.4:
        extra = ODD_VALUES[rng.integers(len(ODD_VALUES))] if rng.random() < 0.5 else "fine"
        for d in instances:
            d["extra"] = extra
    return instances, InstanceOptions(spec, key_field=key_field, keep_key=bool(rng.random() < 0.3))


def test_decoded_instances_taken_in_bulk_give_each_one_what_the_per_row_rules_give():
    from transforms.sources.columnar import clean_instances

    rng = np.random.default_rng(11)
    bulk = refused = 0
    for _ in range(600):
        instances, options = random_instances(rng)
        rows = []
        for d in instances:
            try:
                rows.append(options.convert(d))
            except ConversionError as e:
                rows.append(e)
        block = clean_instances(instances, options)
        if block is None:
            refused += 1
            continue
        bulk += 1
        assert not any(isinstance(r, ConversionError) for r in rows), (instances, rows)
        keys, arrays = block
        if options.key_field:
            assert keys == [options.key_or_none(d) or "<position>" for d in instances]
        expected = parsed(rows, options.spec)
        for name, array in arrays.items():
            assert_same(array, expected[name])
        assert list(ColumnRecords(instances, options, arrays)) == rows
    assert bulk > 150 and refused > 150, (bulk, refused)


def test_json_lines_runs_come_in_bulk_with_their_line_numbers_and_bad_lines_split_them(tmp_path):
    from transforms.sources.files import KeyedBlock
    from transforms.sources.text import keyed_blocks

    path = tmp_path / "in.jsonl"
    path.write_text('{"s": 1.0}\n\n{"s": 2}\n{"s": "x"}\nnot json\n{"s": 4.5}\n')
    options = InstanceOptions((Feature("s", "float32"),), bulk_arrays=True)
    items = list(keyed_blocks(str(path), "in.jsonl", "jsonl", options, block_rows=10))
    # lines 1 and 3 (a blank line between) are a block; line 4 does not convert, so its run goes
    # row by row (line 3 with it); line 5 is not JSON; line 6 is a block of its own
    assert [type(i).__name__ for i in items] == ["tuple"] * 4 + ["KeyedBlock"]
    assert [i[0] for i in items[:4]] == [1, 3, 4, 5]
    assert [i[1] for i in items[:4]] == ["in.jsonl:1", "in.jsonl:3", "in.jsonl:4", "in.jsonl:5"]
    assert [type(i[2]).__name__ for i in items[:4]] == ["bytes", "bytes", "dict", "dict"]  # two dead letters
    block = items[-1]
    assert isinstance(block, KeyedBlock) and block.positions == [6] and block.keys == ["in.jsonl:6"]
    np.testing.assert_array_equal(block.records.feature_arrays()["s"], np.float32([4.5]))
