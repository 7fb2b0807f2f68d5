"""The real entry points on Dataflow, offline: `batch_infer` and `stream_infer` with
`--runner DataflowRunner --dry_run --job_file` build the whole job (our transforms, a real model
exported by models.prepare, a real TFRecord file) without submitting it, and the job JSON shows
what Dataflow would run; GPU settings reach the scoring DoFns; and a worker that must have a GPU
and sees none refuses to score."""

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from models.serving.examples import make_example
from models.serving.model import load_serving_model
from pipelines import batch_infer
from pipelines import stream_infer
from pipelines.options import BatchInferOptions
from tests.test_batch_infer import penguin_values
from transforms.runtime import gpu
from transforms.graph.model import parallel_graph
from transforms.scoring.beam import ScoreChunks
from transforms.sources.tfrecord import ReadKeyedTFRecords

IMAGE = "us-central1-docker.pkg.dev/my-project/workers/tf-beam-inference-gpu:1"
DATAFLOW = ["--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
            "--temp_location", "gs://my-bucket/tmp", "--dry_run"]


@pytest.fixture
def penguin_input(write_tfrecords):
    return write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in penguin_values(20)])


def job_of(path):
    with open(path) as f:
        return json.load(f)


def pool_and_options(job):
    env = job["environment"]
    return env["workerPools"][0], env["sdkPipelineOptions"]["options"], env.get("serviceOptions", [])


def test_batch_job_dry_run_builds_the_whole_job_from_local_paths(offline, penguin_model, penguin_input,
                                                                 tmp_path, capsys):
    version_dir, _ = penguin_model
    out, job_file = tmp_path / "out" / "pred", tmp_path / "job.json"
    assert batch_infer.main(DATAFLOW + ["--input", penguin_input, "--model", f"clf={version_dir}",
                                        "--output", str(out), "--key_feature", "id", "--num_workers", "3",
                                        "--job_file", str(job_file)]) == 0
    printed = capsys.readouterr()
    assert "Dataflow workers will not see them" in printed.err and penguin_input in printed.err
    assert f"job description in {job_file}" in printed.out and "JOB_TYPE_BATCH" in printed.out
    assert not (tmp_path / "out").exists()  # nothing ran, no manifest either
    job = job_of(job_file)
    pool, options, service = pool_and_options(job)
    assert job["type"] == "JOB_TYPE_BATCH" and service == []
    assert "workflow.tar.gz" in [p["name"] for p in pool["packages"]]  # our sdist (--setup_file)
    assert options["setup_file"].endswith("setup.py") and options["input"] == [penguin_input]
    assert pool["numWorkers"] == 3
    assert "use_runner_v2" in job["environment"]["experiments"]
    assert options["model"] == [f"clf={version_dir}"] and options["key_feature"] == "id"


def test_batch_job_dry_run_on_gpus(offline, penguin_model, penguin_input, tmp_path):
    version_dir, _ = penguin_model
    job_file = tmp_path / "job.json"
    assert batch_infer.main(DATAFLOW + ["--input", penguin_input, "--model", version_dir,
                                        "--output", str(tmp_path / "pred"), "--gpu", "nvidia-tesla-t4",
                                        "--sdk_container_image", IMAGE, "--job_file", str(job_file)]) == 0
    job = job_of(job_file)
    pool, options, service = pool_and_options(job)
    assert service == ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    assert (pool["machineType"], pool["diskSizeGb"], pool["workerHarnessContainerImage"]) == (
        "n1-standard-4", 50, IMAGE)
    assert "no_use_multiple_sdk_containers" in job["environment"]["experiments"]
    assert options["gpu"] == "nvidia-tesla-t4" and "setup_file" not in options


@pytest.mark.parametrize("gpu_flags, accelerator", [
    ([], None),
    (["--gpu", "nvidia-l4", "--gpu_sharing", "mps", "--sdk_container_image", IMAGE],
     "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps"),
])
def test_stream_job_dry_run(offline, penguin_model, tmp_path, capsys, gpu_flags, accelerator):
    version_dir, _ = penguin_model
    job_file = tmp_path / "job.json"
    assert stream_infer.main(DATAFLOW + [
        "--input_subscription", "projects/my-project/subscriptions/requests", "--model", f"clf={version_dir}",
        "--output_topic", "projects/my-project/topics/predictions",
        "--errors_topic", "projects/my-project/topics/errors", "--payload_format", "json",
        "--job_file", str(job_file)] + gpu_flags) == 0
    assert "JOB_TYPE_STREAMING" in capsys.readouterr().out
    job = job_of(job_file)
    pool, options, service = pool_and_options(job)
    assert job["type"] == "JOB_TYPE_STREAMING" and options["streaming"] is True
    assert "enable_streaming_engine" in job["environment"]["experiments"]
    assert service == ([accelerator] if accelerator else [])
    if accelerator:
        assert pool["machineType"] == "g2-standard-4" and pool["workerHarnessContainerImage"] == IMAGE


def test_a_real_dataflow_run_refuses_local_paths_before_submitting(penguin_model, penguin_input, tmp_path, capsys):
    version_dir, _ = penguin_model
    argv = [a for a in DATAFLOW if a != "--dry_run"]
    assert batch_infer.main(argv + ["--input", penguin_input, "--model", version_dir,
                                    "--output", str(tmp_path / "pred")]) == 2
    assert "Dataflow workers cannot read this machine's files" in capsys.readouterr().err


def test_gpu_jobs_get_gpu_batch_sizes_unless_given(penguin_model, penguin_input):
    version_dir, _ = penguin_model

    def job(*flags, on_gpus):
        opts = BatchInferOptions(["--input", penguin_input, "--model", version_dir, "--output", "o", *flags])
        return batch_infer.job_from_options(opts, gpu_batches=on_gpus)
    assert (job(on_gpus=False).max_batch_size, job(on_gpus=False).max_batch_bytes) == (None, None)
    assert (job(on_gpus=True).max_batch_size, job(on_gpus=True).max_batch_bytes) == (
        gpu.GPU_BATCH.max_batch_size, gpu.GPU_BATCH.max_batch_bytes)
    assert job("--max_batch_size", "64", on_gpus=True).max_batch_size == 64


def test_a_worker_that_must_have_a_gpu_and_sees_none_refuses_to_score(penguin_model, penguin_input):
    """The scoring DoFn applies the job's GpuSettings in setup: on this machine (no GPU) a GPU job
    fails at once with the reason, instead of scoring on the CPU."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the refusal cannot happen here")
    model = load_serving_model(penguin_model[0], "clf")
    with pytest.raises(Exception, match="refusing to run the model on the CPU"):
        with TestPipeline() as p:
            chunks, _ = p | ReadKeyedTFRecords([penguin_input], 8, 1 << 20)
            scored, _ = chunks | ScoreChunks(parallel_graph([model]), None, gpu.GpuSettings(require_gpu=True))
            scored | beam.Map(lambda s: s)
