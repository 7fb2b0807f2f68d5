"""Test helpers: writing real TFRecord files and reading pipeline outputs back."""

import glob
import gzip as gzip_module
import json
from typing import Iterable, List


def write_tfrecord_file(path: str, records: Iterable[bytes], gzip: bool = False, tail: bytes = b"") -> str:
    """Writes records with TensorFlow's own writer (so our reader is tested against the real format)."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(path, options) as writer:
        for record in records:
            writer.write(record)
    if tail:
        if gzip:
            with gzip_module.open(path, "rb") as f:
                body = f.read()
            with gzip_module.open(path, "wb") as f:
                f.write(body + tail)
        else:
            with open(path, "ab") as f:
                f.write(tail)
    return path


def row_lines(*args, **kwargs) -> List[str]:
    """The JSON lines of transforms.records.rows.rows_block(*args, **kwargs)."""
    from transforms.records.rows import rows_block

    text, count = rows_block(*args, **kwargs)
    return text.split("\n") if count else []


def read_jsonl(pattern: str) -> List[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def run_batch_job(args: List[str], out: str):
    """Runs python -m pipelines.batch_infer in-process with --output out (JSON Lines); returns
    ({key: row}, [dead letter, ...]) read back from its files."""
    from pipelines import batch_infer

    batch_infer.run(args + ["--output", out], save_main_session=False)
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    return rows, read_jsonl(out + ".errors-*.jsonl")


def read_prediction_logs(pattern: str) -> list:
    """The PredictionLogs of every TFRecord file matching pattern (tf.data and the serving protos)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for shard in sorted(glob.glob(pattern)) for r in tf.data.TFRecordDataset(shard)]


def wait_for_output(process, log, text: str, what: str, timeout_s: float = 120):
    """Waits until a subprocess writing to the file object log has written text; raises
    AssertionError naming what did not start (with the log's tail) if it exits or times out."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        log.seek(0)
        if text in log.read():
            return process
        time.sleep(0.2)
    log.seek(0)
    raise AssertionError(f"{what} did not start ({process.poll()}): {log.read()[-2000:]}")
