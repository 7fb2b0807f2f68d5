"""The inference metrics Beam's RunInference reports, per model: batch sizes, batch latency, model
load time and size on disk, as Beam distributions, in the end-of-run summary and in the manifest;
and, for streams, the latency from Pub/Sub's publish time to the result."""

import datetime
import json
import os
import shutil

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from google.protobuf import timestamp_pb2

from models.serving.examples import make_example
from pipelines import batch_infer
from transforms.runtime import metrics
from transforms.runtime.accounting import PUBLISH_TO_RESULT_MS, AccountedDoFn
from transforms.sources.messages import epoch_seconds_of
from transforms.sources.pubsub import MessagesToRecordsFn


def directory_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_each_model_reports_its_batches_latency_load_time_and_size(graph_models, write_tfrecords, tmp_path, capsys):
    records = [make_example({"x": [float(i)]}).SerializeToString() for i in range(250)]
    path = write_tfrecords("in.tfrecord", records)
    out = str(tmp_path / "pred")
    models = {}
    for name in ("five", "ten"):  # copies: this process may have loaded the originals (loads are cached)
        models[name] = str(tmp_path / name / "1")
        shutil.copytree(graph_models[name][0], models[name])
    assert batch_infer.main(["--input", path, "--model", f"five={models['five']}", "--model", f"ten={models['ten']}",
                             "--output", out, "--max_batch_size", "64"]) == 0
    summary = capsys.readouterr().out
    with open(out + ".manifest.json") as f:
        models = {m["name"]: m for m in json.load(f)["models"]}
    for name in ("five", "ten"):
        found = models[name]["inference"]
        assert found["batches"] == 4 and found["batch_size_max"] == 64  # 64 + 64 + 64 + 58
        assert round(found["batches"] * found["batch_size_mean"]) == 250
        latency = found["batch_latency_ms"]
        assert 0 < latency["min"] <= latency["mean"] <= latency["max"]
        assert found["loads"] == 1 and found["load_seconds_max"] > 0
        assert found["bytes_on_disk"] == directory_size(models[name]["path"])
        assert f"{name}: outputs 250, dead letters 0; 4 batches of 62 on average, " in summary
        assert f"; {found['bytes_on_disk']:,} bytes" in summary


def test_publish_times_become_epoch_seconds():
    moment = datetime.datetime(2026, 12, 2, 12, 0, 0, 500000, tzinfo=datetime.timezone.utc)
    assert epoch_seconds_of(moment) == moment.timestamp()
    assert epoch_seconds_of(timestamp_pb2.Timestamp(seconds=10, nanos=250_000_000)) == 10.25
    assert epoch_seconds_of(None) is None and epoch_seconds_of("not a time") is None


def test_a_stream_record_keeps_its_message_publish_time():
    fn = MessagesToRecordsFn((), payload_format="example")
    fn.setup()
    moment = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.timezone.utc)
    (record,) = fn.process(PubsubMessage(make_example({}).SerializeToString(), {}, message_id="m1",
                                         publish_time=moment))
    assert record.published_at == moment.timestamp()


class _Latencies(AccountedDoFn):
    def process(self, published_at):
        self._accounting.publish_to_result([published_at])
        yield published_at


def test_publish_to_result_latency_is_a_beam_distribution():
    import time

    now = time.time()
    p = beam.Pipeline()
    _ = p | beam.Create([now - 2.0, now - 1.0, None]) | beam.ParDo(_Latencies())
    result = p.run()
    result.wait_until_finish()
    latency = metrics.query_distributions(result)[PUBLISH_TO_RESULT_MS]
    assert latency["count"] == 2  # a message without a publish time has no latency
    assert 1000 <= latency["min"] <= latency["max"] < 2000 + 60_000
    assert latency["max"] >= 2000
