"""DataflowJobOptions (--gpu, --gpu_count, --gpu_sharing, --gpu_driver, --gpu_memory_limit_mb,
--job_file), the GPU facts behind them (Dataflow's accelerator service option, a machine type per
GPU), gpu_workers (what --gpu sets on a Dataflow job) and gpu_settings (what worker DoFns apply).

`--dry_run` is Beam's own flag (TestOptions, takes a value: `--dry_run=True`); argparse refuses a
second definition, so it is reused, and pipelines.dataflow.normalize_dry_run_argv lets users write
a bare `--dry_run`.
"""

from typing import List, Optional

from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, PipelineOptions, WorkerOptions

from pipelines.options import OptionsError
from pipelines.runners import is_local
from transforms.runtime.gpu import GpuSettings

SINGLE_PROCESS, MPS = "single_process", "mps"
GPU_SHARING = (SINGLE_PROCESS, MPS)

# Dataflow: worker_accelerator=type:TYPE;count:N;install-nvidia-driver[;use_nvidia_mps]
# (cloud.google.com/dataflow/docs/gpu/use-l4-gpus, .../gpu/use-nvidia-mps: MPS needs count 1 and
# no --experiments=no_use_multiple_sdk_containers).
INSTALL_DRIVER = "install-nvidia-driver"
USE_NVIDIA_MPS = "use_nvidia_mps"
SINGLE_SDK_PROCESS_EXPERIMENT = "no_use_multiple_sdk_containers"  # apache/beam#22895, PR #13475

# Default worker machine type per GPU type and count (cloud.google.com/compute/docs/gpus): L4 only
# on G2, A100 40GB on A2 Standard (a2-highgpu), A100 80GB on A2 Ultra, H100 80GB on A3 High, H100
# Mega on A3 Mega; accelerator-optimized types have a fixed GPU count. T4, P4, V100 and P100
# attach to N1 (n1-standard-8 is within every one-GPU vCPU limit: V100 allows 12).
MACHINE_TYPES = {
    "nvidia-l4": {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
    "nvidia-tesla-a100": {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g",
                          8: "a2-highgpu-8g", 16: "a2-megagpu-16g"},
    "nvidia-a100-80gb": {n: f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)},
    "nvidia-h100-80gb": {n: f"a3-highgpu-{n}g" for n in (1, 2, 4, 8)},
    "nvidia-h100-mega-80gb": {8: "a3-megagpu-8g"},
    "nvidia-tesla-t4": {n: "n1-standard-4" for n in (1, 2, 4)},
    "nvidia-tesla-p4": {n: "n1-standard-8" for n in (1, 2, 4)},
    "nvidia-tesla-v100": {n: "n1-standard-8" for n in (1, 2, 4, 8)},
    "nvidia-tesla-p100": {n: "n1-standard-8" for n in (1, 2, 4)},
}
# The machine family each GPU type needs (a --machine_type outside it is refused by Compute Engine).
MACHINE_FAMILIES = {
    "nvidia-l4": ("g2-",), "nvidia-tesla-a100": ("a2-highgpu-", "a2-megagpu-"),
    "nvidia-a100-80gb": ("a2-ultragpu-",), "nvidia-h100-80gb": ("a3-highgpu-",),
    "nvidia-h100-mega-80gb": ("a3-megagpu-",),
}
N1_FAMILY = ("n1-", "custom-")
# CUDA images are large (docker/Dockerfile: ~10 GB unpacked); Dataflow's default boot disk is smaller.
GPU_DISK_SIZE_GB = 50


class DataflowOptionsError(OptionsError):
    """A flag combination that would fail on Dataflow (or stall offline); raised before building."""


class DataflowJobOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--gpu", default=None, metavar="TYPE",
                            help="Dataflow GPU workers: nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100, ... "
                                 "(needs --sdk_container_image; sets the accelerator service option, a "
                                 "machine type, runner v2; workers without a GPU fail)")
        parser.add_argument("--gpu_count", type=int, default=1, help="GPUs per worker (default 1)")
        parser.add_argument("--gpu_sharing", default=SINGLE_PROCESS,
                            help=f"{SINGLE_PROCESS} (one SDK process per worker, so one model per GPU; "
                                 f"default) or {MPS} (NVIDIA MPS: one SDK process per vCPU share the GPU)")
        parser.add_argument("--gpu_driver", default=None, metavar="VERSION",
                            help="NVIDIA driver Dataflow installs: default or latest (H100s running "
                                 "TensorFlow's PTX may need latest); default: Dataflow's default")
        parser.add_argument("--gpu_memory_limit_mb", type=int, default=None,
                            help="GPU memory each worker process may use (default: grow as needed)")
        parser.add_argument("--job_file", default=None, metavar="PATH",
                            help="write the Dataflow job description (JSON) here; with --dry_run the "
                                 "job is built offline and not submitted")


def worker_accelerator(gpu: str, count: int, mps: bool = False, driver: Optional[str] = None) -> str:
    """The Dataflow service option that attaches `count` GPUs of type `gpu` to each worker."""
    install = f"{INSTALL_DRIVER}:{driver}" if driver else INSTALL_DRIVER
    parts = [f"type:{gpu}", f"count:{count}", install] + ([USE_NVIDIA_MPS] if mps else [])
    return "worker_accelerator=" + ";".join(parts)


def parse_accelerator(option: str) -> dict:
    """'worker_accelerator=type:T;count:N;install-nvidia-driver[:V];use_nvidia_mps' -> dict."""
    fields = dict(part.partition(":")[::2] for part in option.split("=", 1)[1].split(";") if part)
    return {"type": fields.get("type"), "count": int(fields.get("count") or 1),
            "install_nvidia_driver": INSTALL_DRIVER in fields,
            "driver_version": fields.get(INSTALL_DRIVER) or None,
            "use_nvidia_mps": USE_NVIDIA_MPS in fields}


def default_machine_type(gpu: str, count: int) -> Optional[str]:
    """The smallest machine type that carries `count` GPUs of type `gpu`; None if unknown."""
    return MACHINE_TYPES.get(gpu, {}).get(count)


def machine_family_problem(gpu: str, machine_type: str) -> Optional[str]:
    """Why `machine_type` cannot carry `gpu` (None when it can, or when we do not know)."""
    if gpu not in MACHINE_TYPES:
        return None
    families = MACHINE_FAMILIES.get(gpu, N1_FAMILY)
    if machine_type.startswith(families):
        return None
    return f"--machine_type {machine_type} cannot carry {gpu} GPUs (needs {' or '.join(families)}*)"


def gpu_settings(options: PipelineOptions) -> GpuSettings:
    """What the model-loading DoFns apply on the worker (transforms.runtime.gpu.configure_gpus). A worker
    must see a GPU only when --gpu is given on a remote runner (the DirectRunner ignores --gpu)."""
    job = options.view_as(DataflowJobOptions)
    return GpuSettings(require_gpu=bool(job.gpu) and not is_local(options), memory_limit_mb=job.gpu_memory_limit_mb)


def gpu_workers(options: PipelineOptions) -> List[str]:
    """--gpu on Dataflow: the accelerator service option, one model per GPU (one SDK process, or
    MPS), a machine type and disk that fit; returns warnings, raises DataflowOptionsError."""
    job = options.view_as(DataflowJobOptions)
    gpu, count, sharing = job.gpu.strip().lower(), job.gpu_count, job.gpu_sharing
    cloud, worker, debug = (options.view_as(c) for c in (GoogleCloudOptions, WorkerOptions, DebugOptions))
    accelerator = worker_accelerator(gpu, count, mps=sharing == MPS, driver=job.gpu_driver)
    service = list(cloud.dataflow_service_options or [])
    problems = gpu_flag_problems(job, worker, debug, service, accelerator)
    if problems:
        raise DataflowOptionsError("; ".join(problems))
    warnings = [] if gpu in MACHINE_TYPES else [
        f"--gpu {gpu} is not a GPU type we know ({', '.join(MACHINE_TYPES)}); passed to Dataflow as is"]
    cloud.dataflow_service_options = service + ([accelerator] if accelerator not in service else [])
    if sharing == MPS:
        if not job.gpu_memory_limit_mb:
            warnings.append("--gpu_sharing mps: one SDK process per vCPU shares the GPU's memory; consider "
                            "--gpu_memory_limit_mb of about (GPU memory - model) / vCPUs")
    else:
        debug.add_experiment(SINGLE_SDK_PROCESS_EXPERIMENT)  # one process, one model per GPU
        if count > 1:
            warnings.append(f"--gpu_count {count} with one SDK process: TensorFlow places the model on "
                            "GPU:0 only; more workers with one GPU each use them all")
    return warnings + worker_machine_warnings(worker, gpu, count)


def gpu_flag_problems(job, worker, debug, service: List[str], accelerator: str) -> List[str]:
    """What is wrong with the GPU flags of a Dataflow job (none: an empty list)."""
    count, sharing = job.gpu_count, job.gpu_sharing
    problems = []
    if count < 1:
        problems.append("--gpu_count must be at least 1")
    if sharing not in GPU_SHARING:
        problems.append(f"--gpu_sharing must be one of {', '.join(GPU_SHARING)}")
    if job.gpu_memory_limit_mb is not None and job.gpu_memory_limit_mb < 1:
        problems.append("--gpu_memory_limit_mb must be positive")
    if not worker.sdk_container_image:
        problems.append("--gpu needs --sdk_container_image: Dataflow's stock image has no CUDA, so "
                        "TensorFlow could not use the GPU; build docker/Dockerfile and pass its registry path")
    if any(o.startswith("worker_accelerator=") and o != accelerator for o in service):
        problems.append("give --gpu or a worker_accelerator service option, not both")
    if sharing == MPS and count != 1:
        problems.append("--gpu_sharing mps needs --gpu_count 1 (Dataflow runs MPS on single-GPU workers)")
    if sharing == MPS and debug.lookup_experiment(SINGLE_SDK_PROCESS_EXPERIMENT):
        problems.append(f"--gpu_sharing mps cannot run with --experiments={SINGLE_SDK_PROCESS_EXPERIMENT} "
                        "(one process per worker leaves nothing to share)")
    if sharing != MPS and debug.lookup_experiment("use_multiple_sdk_containers"):
        problems.append("--experiments=use_multiple_sdk_containers contradicts --gpu_sharing single_process")
    return problems


def worker_machine_warnings(worker, gpu: str, count: int) -> List[str]:
    """Fills in a machine type and disk that fit the GPUs; warns about a machine that may not."""
    warnings = []
    if not worker.machine_type:
        worker.machine_type = default_machine_type(gpu, count)
        if not worker.machine_type:
            warnings.append(f"no default machine type for {count} x {gpu}: give --machine_type")
    elif problem := machine_family_problem(gpu, worker.machine_type):
        warnings.append(problem)
    worker.disk_size_gb = worker.disk_size_gb or GPU_DISK_SIZE_GB
    return warnings
