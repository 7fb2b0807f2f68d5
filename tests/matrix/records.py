"""The conformance matrix's one data generator: a feature spec holding every feature kind, and
records drawn from it with hypothesis, written in every input form a user has.

Feature kinds (SPEC): a float scalar, a float vector of K values, an int64 VarLen feature (0..5
values), UTF-8 text, bytes that are not UTF-8, an int64 feature with a default that some records
leave out, and a raw uint8 image blob (encoding "raw"); plus the string key `id`, unique per record.

Deterministic: `cell_records(cell_id)` draws through `@hypothesis.seed` (a seed derived from the
cell id with sha256, no database, generate phase only), so a cell gets the same records on every
run and in every process (tests/matrix/test_matrix.py checks that in a fresh interpreter).

The same logical records are written by `write_tfrecord` (tf.Example, plain or .tfrecord.gz),
`write_jsonl`, `write_csv` (the README's rules: several values as a JSON list in one cell,
binary data as {"b64": ...}), `write_parquet` (pyarrow columns of each kind's natural type: a
fixed-size list, a list, binary; a left-out `opt` a null), `bigquery_rows` (for the google.cloud.bigquery client) and
`pubsub_messages` (JSON payloads keyed by the `id` attribute).
"""

import base64
import contextlib
import csv
import hashlib
import json
from typing import Any, Dict, List

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

K = 3                    # values of the float vector
IMAGE_SHAPE = (4, 4, 1)  # raw uint8 image: 16 bytes
IMAGE_BYTES = 16
MAX_INTS = 5
OPT_DEFAULT = 7
RECORDS_PER_CELL = 16
KEY = "id"

# The spec the test models parse and declare (assets.extra/feature_spec.json).
SPEC = {"features": [
    {"name": "f_scalar", "dtype": "float32", "shape": []},
    {"name": "f_vec", "dtype": "float32", "shape": [K]},
    {"name": "ints", "dtype": "int64", "varlen": True},
    {"name": "text", "dtype": "string", "shape": []},
    {"name": "blob", "dtype": "string", "shape": []},
    {"name": "opt", "dtype": "int64", "shape": [], "default": OPT_DEFAULT},
    {"name": "image", "dtype": "string", "shape": list(IMAGE_SHAPE), "model_dtype": "uint8",
     "encoding": "raw"},
]}
FEATURE_KINDS = ("float scalar", "float vector", "int64 varlen", "utf-8 text", "non-utf-8 bytes",
                 "default (left out)", "raw image bytes")

_FLOAT32 = st.floats(-100, 100, width=32, allow_nan=False, allow_infinity=False)
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


def _record_strategy():
    """One logical record without its key: a dict of Python values (bytes for binary)."""
    return st.fixed_dictionaries({
        "f_scalar": _FLOAT32,
        "f_vec": st.lists(_FLOAT32, min_size=K, max_size=K),
        "ints": st.lists(st.integers(-1000, 1000), min_size=0, max_size=MAX_INTS),
        "text": _TEXT,
        "blob": st.binary(min_size=0, max_size=10).map(lambda b: b"\xff" + b),  # never UTF-8
        "opt": st.integers(-50, 50),
        "image": st.binary(min_size=IMAGE_BYTES, max_size=IMAGE_BYTES),
    })


def _cell_seed(cell_id: str) -> int:
    return int.from_bytes(hashlib.sha256(cell_id.encode()).digest()[:8], "big")


@contextlib.contextmanager
def _without_local_constants():
    """Hypothesis (6.1xx) also draws literals it finds in the local modules loaded so far
    (providers._get_local_constants), so a draw would depend on what the process imported. For
    the draw, it sees none, and the constants cache it filled from them is emptied around it."""
    from hypothesis.internal.conjecture import providers

    saved = providers._get_local_constants
    providers.CONSTANTS_CACHE.cache.clear()
    providers._get_local_constants = providers.Constants
    try:
        yield
    finally:
        providers._get_local_constants = saved
        providers.CONSTANTS_CACHE.cache.clear()


def draw_values(cell_id: str, n: int = RECORDS_PER_CELL) -> List[Dict[str, Any]]:
    """n records drawn by hypothesis with the cell's fixed seed (the last of a few generated
    examples: hypothesis' first one is its simplest, all zeros)."""
    drawn = []

    @seed(_cell_seed(cell_id))
    @settings(max_examples=4, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_record_strategy(), min_size=n, max_size=n))
    def capture(values):
        drawn.append(values)

    with _without_local_constants():
        capture()
    return drawn[-1]


def cell_records(cell_id: str, n: int = RECORDS_PER_CELL) -> List[Dict[str, Any]]:
    """The cell's records: drawn values, a unique key, every third record without `opt`, and every
    fourth (from the second) with a negative `f_scalar` (the gate model rejects those)."""
    prefix = hashlib.sha256(cell_id.encode()).hexdigest()[:6]
    records = []
    for i, values in enumerate(draw_values(cell_id, n)):
        record = dict(values, id=f"{prefix}-{i:03d}")
        magnitude = abs(record["f_scalar"])
        record["f_scalar"] = -(magnitude + 0.5) if i % 4 == 1 else magnitude
        if i % 3 == 2:
            del record["opt"]
        records.append(record)
    return records


def rejected_by_gate(record: Dict[str, Any]) -> bool:
    return record["f_scalar"] < 0


def digest(records: List[Dict[str, Any]]) -> str:
    """A stable fingerprint of records (for the determinism check)."""
    return hashlib.sha256(json.dumps([jsonable(r) for r in records], sort_keys=True).encode()).hexdigest()


def b64(data: bytes) -> Dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def jsonable(record: Dict[str, Any]) -> Dict[str, Any]:
    """The record as a JSON object: bytes as {"b64": ...} (Vertex AI's form, as the README says)."""
    return {name: b64(value) if isinstance(value, bytes) else value for name, value in record.items()}


_DTYPES = dict({f["name"]: f["dtype"] for f in SPEC["features"]}, id="string", h="float32")


def _feature(dtype: str, value: Any):
    import tensorflow as tf

    values = value if isinstance(value, list) else [value]
    if dtype == "float32":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    if dtype == "int64":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") if isinstance(v, str) else v for v in values]))


def to_example(record: Dict[str, Any]) -> bytes:
    """The record as a serialized tf.Example, built with tf.train directly (not the job's code);
    an empty VarLen list is left out, as tf.Example has no other way to hold it."""
    import tensorflow as tf

    features = {name: _feature(_DTYPES[name], value) for name, value in record.items() if value != []}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_tfrecord(path: str, records: List[Dict[str, Any]], gzip: bool = False) -> str:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")) as w:
        for record in records:
            w.write(to_example(record))
    return path


def write_jsonl(path: str, records: List[Dict[str, Any]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(jsonable(record), ensure_ascii=False) + "\n")
    return path


def csv_cell(value: Any) -> str:
    """A CSV cell by the README: a list as a JSON list, binary as {"b64": ...}, text as it is."""
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bytes):
        return json.dumps(b64(value))
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def write_csv(path: str, records: List[Dict[str, Any]]) -> str:
    columns = [KEY] + [f["name"] for f in SPEC["features"]]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for record in records:
            writer.writerow(["" if record.get(c) is None else csv_cell(record[c]) for c in columns])
    return path


def write_parquet(path: str, records: List[Dict[str, Any]]) -> str:
    """The records as a Parquet file, written by pyarrow in row groups of 5 rows: f_vec a
    fixed-size list of K floats, ints a list of int64, blob and image binary, a left-out `opt` null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"id": pa.string(), "f_scalar": pa.float32(), "f_vec": pa.list_(pa.float32(), K),
             "ints": pa.list_(pa.int64()), "text": pa.string(), "blob": pa.binary(), "opt": pa.int64(),
             "image": pa.binary(IMAGE_BYTES)}
    table = pa.table({name: pa.array([r.get(name) for r in records], kind) for name, kind in types.items()})
    pq.write_table(table, path, row_group_size=5)
    return path


BIGQUERY_SCHEMA = (("id", "STRING", "REQUIRED"), ("f_scalar", "FLOAT64", "NULLABLE"),
                   ("f_vec", "FLOAT64", "REPEATED"), ("ints", "INT64", "REPEATED"),
                   ("text", "STRING", "NULLABLE"), ("blob", "BYTES", "NULLABLE"),
                   ("opt", "INT64", "NULLABLE"), ("image", "BYTES", "NULLABLE"))


def bigquery_rows(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows for client.insert_rows (it sends BYTES as base64 itself); a left-out `opt` is NULL."""
    return [{name: record.get(name) for name, _, _ in BIGQUERY_SCHEMA} for record in records]


def pubsub_messages(records: List[Dict[str, Any]]) -> List[tuple]:
    """(JSON payload without the key, {"id": key}) per record: --payload_format json --key_attribute id."""
    return [(json.dumps(jsonable({k: v for k, v in r.items() if k != KEY})).encode(), {KEY: r[KEY]})
            for r in records]
