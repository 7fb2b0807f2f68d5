"""Our core inside other people's pipelines: tfx-bsl's own RunInference feeding our rows and
sinks (predict, classify, regress and multi-inference logs), and our engines behind Beam's
RunInference (ChunkModelHandler). Real models: a TF1 SavedModelBuilder export with three
signatures (tests/support/foreign_models.py) and the demo classifier from models.prepare."""

import base64
import glob

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.serving.examples import make_example
from models.serving.model import load_serving_model
from tests.helpers import read_jsonl
from tests.support.foreign_models import LABELS, expected_linear, tf1_linear_export
from transforms.graph.model import parallel_graph
from transforms.graph.postprocessors import Classify, Keep
from transforms.scoring.model_handler import DEAD_LETTER_MODEL_ID, ChunkModelHandler
from transforms.scoring.tfx_bsl_logs import ToPredictionRows
from transforms.sinks.files import WriteJsonLines

XS = [[1.0, 2.0], [0.5, -0.5], [-3.0, 1.0], [2.0, 2.0], [0.0, 0.25]]


@pytest.fixture(scope="module")
def linear_dir(tmp_path_factory):
    return tf1_linear_export(str(tmp_path_factory.mktemp("tf1_linear")))


def keyed_examples():
    return [(f"k{i}", make_example({"x": x}).SerializeToString()) for i, x in enumerate(XS)]


def tfx_bsl_rows(model_dir, signatures, out, postprocess=None):
    """The seed's own pattern: keyed | tfx_bsl.public.beam.RunInference(spec), then our rows and sink."""
    from tfx_bsl.public.beam import RunInference as TfxBslRunInference
    from tfx_bsl.public.proto import model_spec_pb2

    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=model_dir, signature_name=list(signatures)))
    with TestPipeline() as p:
        logs = p | beam.Create(keyed_examples()) | TfxBslRunInference(spec)
        rows, dead = logs | ToPredictionRows("linear", postprocess=postprocess)
        rows | WriteJsonLines(out)
        dead | "Dead" >> WriteJsonLines(out + ".errors")
    return {r["key"]: r["linear"] for r in read_jsonl(out + "-*.jsonl")}, read_jsonl(out + ".errors-*.jsonl")


def test_tfx_bsl_predict_logs_become_our_rows(linear_dir, tmp_path):
    rows, dead = tfx_bsl_rows(linear_dir, ["serving_default"], str(tmp_path / "predict"))
    expected = expected_linear(XS)
    assert dead == [] and sorted(rows) == [f"k{i}" for i in range(len(XS))]
    for i in range(len(XS)):
        np.testing.assert_allclose(rows[f"k{i}"]["score"], expected["score"][i], rtol=1e-6)
        np.testing.assert_allclose(rows[f"k{i}"]["double"], expected["double"][i], rtol=1e-6)


def test_tfx_bsl_classify_logs_through_our_post_processing(linear_dir, tmp_path):
    steps = [Classify(output="scores", labels=["negative", "positive"]), Keep(["label", "score"])]
    rows, dead = tfx_bsl_rows(linear_dir, ["classify"], str(tmp_path / "classify"), steps)
    scores = expected_linear(XS)["scores"]
    assert dead == []
    for i in range(len(XS)):
        assert rows[f"k{i}"]["label"] == ["negative", "positive"][int(np.argmax(scores[i]))]
        np.testing.assert_allclose(rows[f"k{i}"]["score"], scores[i].max(), rtol=1e-6)


def test_tfx_bsl_regress_and_multi_inference_logs(linear_dir, tmp_path):
    regress, _ = tfx_bsl_rows(linear_dir, ["regress"], str(tmp_path / "regress"))
    multi, dead = tfx_bsl_rows(linear_dir, ["classify", "regress"], str(tmp_path / "multi"))
    expected = expected_linear(XS)
    assert dead == []
    for i in range(len(XS)):
        np.testing.assert_allclose(regress[f"k{i}"]["outputs"], expected["outputs"][i][0], rtol=1e-6)
        row = multi[f"k{i}"]
        assert set(row) == {"classify/classes", "classify/scores", "regress/outputs"}
        assert row["classify/classes"] == [label.decode() for label in LABELS]
        np.testing.assert_allclose(row["classify/scores"], expected["scores"][i], rtol=1e-6)
        np.testing.assert_allclose(row["regress/outputs"], expected["outputs"][i][0], rtol=1e-6)


def test_our_engines_behind_beams_run_inference(penguin_model):
    """ChunkModelHandler: (key, tf.Example) in, (key, PredictionResult) out; a bad record is a
    dead-letter result, not a failed batch, and the good records of its batch are still scored."""
    from tests.test_batch_infer import expected_outputs, penguin_values

    version_dir, keras_model = penguin_model
    model = load_serving_model(version_dir, "penguins")
    values = penguin_values(12, seed=21)
    keyed = [(v["id"], make_example(v).SerializeToString()) for v in values]
    keyed[5] = ("garbage", b"\x0a\xff not an example")
    good = [i for i in range(12) if i != 5]
    expected = expected_outputs(keras_model, [values[i] for i in good])
    want = {values[i]["id"]: expected["probabilities"][j] for j, i in enumerate(good)}

    def check(results):
        rows = {k: r for k, r in results if r.model_id != DEAD_LETTER_MODEL_ID}
        dead = [(k, r) for k, r in results if r.model_id == DEAD_LETTER_MODEL_ID]
        assert sorted(rows) == sorted(want), sorted(rows)
        for key, result in rows.items():
            assert result.model_id == "penguins"
            np.testing.assert_allclose(result.inference["penguins"]["probabilities"], want[key], rtol=1e-6)
        (key, result), = dead
        assert key == "garbage" and result.inference["stage"] == "decode"
        assert result.example == keyed[5][1] == base64.b64decode(result.inference["input_base64"])

    for engine in ("fast", "tfx-bsl"):
        with TestPipeline() as p:
            results = (p | f"Create{engine}" >> beam.Create(keyed)
                       | f"RunInference{engine}" >> RunInference(ChunkModelHandler(model, engine=engine,
                                                                                    max_batch_size=4)))
            assert_that(results, check, label=f"check_{engine}")


def test_chunk_model_handler_runs_a_graph(graph_models):
    five = load_serving_model(graph_models["five"][0], "five")
    ten = load_serving_model(graph_models["ten"][0], "ten")
    keyed = [(f"k{i}", make_example({"x": [float(i)]}).SerializeToString()) for i in range(6)]
    with TestPipeline() as p:
        results = p | beam.Create(keyed) | RunInference(ChunkModelHandler(parallel_graph([five, ten])))
        assert_that(results | beam.Map(lambda kr: (kr[0], kr[1].model_id, kr[1].inference)), equal_to(
            [(f"k{i}", "five+ten", {"five": {"y": [5.0 * i]}, "ten": {"y": [10.0 * i]}}) for i in range(6)]))


@pytest.mark.parametrize("signature", ["serving_default", "classify", "regress"])
def test_tfx_bsl_engine_writes_the_prediction_logs_tfx_bsl_writes(linear_dir, write_tfrecords, tmp_path, signature):
    """--engine tfx-bsl --output_format tfrecord keeps tfx-bsl's native logs (predict, classify,
    regress): byte for byte what tfx_bsl.public.beam.RunInference writes for the same records."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    from tfx_bsl.public.beam import RunInference as TfxBslRunInference
    from tfx_bsl.public.proto import model_spec_pb2

    from pipelines import batch_infer

    records = [record for _, record in keyed_examples()] + [b"\x0a\xff not an example"]
    path = write_tfrecords("linear.tfrecord", records)
    out = str(tmp_path / "ours")
    batch_infer.run(["--input", path, "--model", linear_dir, "--signature", signature, "--engine", "tfx-bsl",
                     "--output_format", "tfrecord", "--output", out], save_main_session=False)
    ours = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for shard in sorted(glob.glob(out + "-*.tfrecord"))
            for r in tf.data.TFRecordDataset(shard)]
    dead = read_jsonl(out + ".errors-*.jsonl")
    assert [(d["key"], d["stage"]) for d in dead] == [(f"linear.tfrecord:{len(XS)}", "decode")]

    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=linear_dir, signature_name=[signature]))
    reference_out = str(tmp_path / "reference")
    with TestPipeline() as p:
        (p | beam.Create(records[:len(XS)]) | TfxBslRunInference(spec)
         | beam.io.WriteToTFRecord(reference_out, coder=beam.coders.ProtoCoder(prediction_log_pb2.PredictionLog)))
    reference = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
                 for shard in sorted(glob.glob(reference_out + "*"))
                 for r in tf.data.TFRecordDataset(shard)]
    kind = {"serving_default": "predict_log", "classify": "classify_log", "regress": "regress_log"}[signature]
    assert {log.WhichOneof("log_type") for log in ours} == {kind}
    assert sorted(log.SerializeToString(deterministic=True) for log in ours) == sorted(
        log.SerializeToString(deterministic=True) for log in reference)
    assert len(ours) == len(XS)
