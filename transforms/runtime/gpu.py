"""GPU set-up for the model-loading DoFns: memory growth (or a per-process memory limit) before any
TensorFlow op allocates the GPU, and a worker that must have a GPU and sees none fails at once.

Call configure_gpus (or GpuSettings.apply) first thing in DoFn.setup, before a model loads. It is
idempotent per process: the first call configures TensorFlow and initializes its GPU devices (so a
tfx-bsl TF1 Session created later reuses them instead of grabbing all memory); later calls return
the same state and only repeat the require_gpu check. TensorFlow is imported lazily.

Batch sizes for GPU workers: GPU_BATCH (gpu_batch_defaults()); the CPU defaults are
transforms.records.chunk's 1024 records / 2 MiB (512 KiB for models that decode images).
"""

import dataclasses
import logging
import os
import threading
from typing import Any, Optional, Tuple

_LOG = logging.getLogger(__name__)


class GpuUnavailableError(RuntimeError):
    """The job asked for GPU workers and this worker process sees no GPU."""


@dataclasses.dataclass(frozen=True)
class GpuState:
    """What configure_gpus found and did in this process."""
    gpus: Tuple[str, ...]                 # physical GPU names TensorFlow sees
    logical_gpus: int                      # GPUs TensorFlow initialized (0 when a GPU failed to init)
    memory_growth: bool
    memory_limit_mb: Optional[int]
    problem: Optional[str] = None          # settings TensorFlow refused (runtime already initialized)


@dataclasses.dataclass(frozen=True)
class GpuSettings:
    """Picklable GPU settings carried by DoFns to the workers (see pipelines.gpu_options)."""
    require_gpu: bool = False
    memory_limit_mb: Optional[int] = None

    def apply(self, config: Any = None) -> GpuState:
        return configure_gpus(memory_growth=self.memory_limit_mb is None,
                              memory_limit_mb=self.memory_limit_mb, require_gpu=self.require_gpu,
                              config=config)


@dataclasses.dataclass(frozen=True)
class BatchDefaults:
    max_batch_size: int          # records per model call (the fast engine's chunk size)
    max_batch_bytes: int         # serialized input bytes per model call
    stream_max_batch_size: int   # streaming: largest batch (filled within --max_batch_latency_ms)


# On CPU (transforms.records.chunk: 2 MiB, 1024 records), batches of decoded images are kept small. On a
# GPU each call pays a fixed launch + host-to-device cost, so larger batches amortize it: 4096
# records per call, up to 8 MiB of serialized input (~680 64x64x3 raw images; ~32 MiB once
# decoded to float32, far below the 16 GB of the smallest Dataflow GPU, the T4). Streaming keeps
# latency bounded by --max_batch_latency_ms; 1024 lets a busy GPU take bigger batches.
GPU_BATCH = BatchDefaults(max_batch_size=4096, max_batch_bytes=8 * 1024 * 1024, stream_max_batch_size=1024)


def gpu_batch_defaults() -> BatchDefaults:
    """Batch sizes for GPU workers, used when the user gave no --max_batch_size/--max_batch_bytes."""
    return GPU_BATCH


_STATE: Optional[GpuState] = None
_LOCK = threading.Lock()


def configure_gpus(memory_growth: bool = True, memory_limit_mb: Optional[int] = None,
                   require_gpu: bool = False, config: Any = None) -> GpuState:
    """Configures TensorFlow's GPUs once per process; raises GpuUnavailableError if require_gpu and
    none is usable. `config` stands in for tf.config in tests (list_physical_devices,
    list_logical_devices, experimental.set_memory_growth, set_logical_device_configuration,
    LogicalDeviceConfiguration)."""
    global _STATE
    with _LOCK:
        if _STATE is None:
            _STATE = _configure(config, memory_growth, memory_limit_mb)
        elif (_STATE.memory_growth, _STATE.memory_limit_mb) != _effective(memory_growth, memory_limit_mb):
            _LOG.warning("GPUs already configured in this process (growth=%s, limit=%s MB); ignoring "
                         "growth=%s, limit=%s MB", _STATE.memory_growth, _STATE.memory_limit_mb,
                         memory_growth, memory_limit_mb)
        state = _STATE
    if require_gpu and not (state.gpus and state.logical_gpus):
        raise GpuUnavailableError(no_gpu_message(state))
    return state


def _configure(config: Any, memory_growth: bool, memory_limit_mb: Optional[int]) -> GpuState:
    if config is None:
        import tensorflow as tf

        config = tf.config
    gpus = list(config.list_physical_devices("GPU"))
    growth, memory_limit_mb = _effective(memory_growth, memory_limit_mb)
    problem = None
    try:
        for gpu in gpus:
            if memory_limit_mb:
                config.set_logical_device_configuration(
                    gpu, [config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)])
            elif growth:
                config.experimental.set_memory_growth(gpu, True)
    except (RuntimeError, ValueError) as e:  # TF: "Physical devices cannot be modified after being initialized"
        problem = f"GPU memory settings not applied ({e}); TensorFlow was initialized before configure_gpus"
        _LOG.warning(problem)
    logical = len(config.list_logical_devices("GPU")) if gpus else 0  # initializes with our settings
    state = GpuState(tuple(getattr(g, "name", str(g)) for g in gpus), logical, growth, memory_limit_mb,
                     problem)
    _LOG.info("GPUs: %s", state)
    return state


def _effective(memory_growth: bool, memory_limit_mb: Optional[int]) -> Tuple[bool, Optional[int]]:
    """A memory limit replaces growth (TensorFlow allows one or the other per device)."""
    return bool(memory_growth and not memory_limit_mb), memory_limit_mb or None


def no_gpu_message(state: GpuState, environ: Optional[dict] = None) -> str:
    environ = os.environ if environ is None else environ
    seen = (f"{len(state.gpus)} physical GPU(s) {list(state.gpus)} but {state.logical_gpus} initialized"
            if state.gpus else "no GPU (tf.config.list_physical_devices('GPU') == [])")
    return (f"this job asked for GPU workers (--gpu) but TensorFlow sees {seen} in this worker process; "
            f"refusing to run the model on the CPU. {_build_info()}; "
            f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}; "
            f"LD_LIBRARY_PATH={environ.get('LD_LIBRARY_PATH', '(unset)')}. Check that the job runs the "
            "GPU image (docker/Dockerfile) via --sdk_container_image, that dataflow_service_options "
            "has worker_accelerator=type:...;count:...;install-nvidia-driver, that the driver is "
            "mounted (/usr/local/nvidia/bin/nvidia-smi works in the container), and that the "
            "worker log has no 'Cannot dlopen some GPU libraries' line from TensorFlow.")


def _build_info() -> str:
    try:
        import tensorflow as tf

        info = tf.sysconfig.get_build_info()
        return (f"TensorFlow {tf.__version__} (CUDA build: {info.get('is_cuda_build')}, CUDA "
                f"{info.get('cuda_version')}, cuDNN {info.get('cudnn_version')})")
    except Exception as e:  # pylint: disable=broad-except
        return f"TensorFlow build info unavailable ({e})"


def _reset_for_tests() -> None:
    global _STATE
    with _LOCK:
        _STATE = None
