"""Which runner runs a job, named as Beam names it, and the local runner every local job is pinned to.

Beam 2.77's DirectRunner picks its runner at run time: it first tries to download and start the
Prism runner and falls back to the FnApiRunner (batch) or the BundleBasedDirectRunner (streams)
only when that fails. A laptop with internet would then run on Prism and an offline one on the
FnApiRunner. Local jobs here skip the guessing: `--runner DirectRunner` (the default) means the
FnApiRunner for batch jobs and the BundleBasedDirectRunner for streams, on every machine.
"""

import dataclasses
import logging
from typing import Optional

from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, PortableOptions, SetupOptions,
                                                  StandardOptions)

from pipelines.options import OptionsError

# Beam's own resolution (apache_beam.runners.runner.create_runner): a class name in any case,
# with or without the "Runner" suffix, or a dotted path.
_KNOWN = {path.rsplit(".", 1)[-1].lower(): path.rsplit(".", 1)[-1] for path in StandardOptions.ALL_KNOWN_RUNNERS}
LOCAL_RUNNERS = tuple(StandardOptions.LOCAL_RUNNERS)
DATAFLOW_RUNNERS = ("DataflowRunner", "TestDataflowRunner")
DIRECT_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")  # the runners that would choose for themselves
FN_API_RUNNER = "FnApiRunner"
BUNDLE_RUNNER = "BundleBasedDirectRunner"
PRISM_RUNNER = "PrismRunner"
MULTI_PROCESSING = "multi_processing"


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name as Beam resolves --runner: 'dataflow', 'DataFlow', 'DataflowRunner'
    and 'apache_beam.runners.dataflow.dataflow_runner.DataflowRunner' all give 'DataflowRunner'
    ('DirectRunner' when none is given; the class name for a runner instance)."""
    runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    if not isinstance(runner, str):
        return type(runner).__name__
    lowered = runner.lower()
    return _KNOWN.get(lowered, _KNOWN.get(lowered + "runner", runner.rsplit(".", 1)[-1]))


def is_local(options: PipelineOptions) -> bool:
    return runner_name(options) in LOCAL_RUNNERS


def is_dataflow(options: PipelineOptions) -> bool:
    return runner_name(options) in DATAFLOW_RUNNERS


@dataclasses.dataclass(frozen=True)
class LocalRunner:
    """The runner a local job runs on: its name, Beam's running mode and the worker count."""
    name: str
    mode: str = "in_memory"
    workers: int = 1

    def describe(self) -> str:
        if self.name == PRISM_RUNNER:
            return f"{self.name} ({self.mode} workers)"
        if self.name != FN_API_RUNNER:
            return self.name
        return f"{self.name} ({self.mode}, {self.workers} worker{'s' if self.workers != 1 else ''})"

    @property
    def out_of_process(self) -> bool:
        """Whether workers run in processes of their own (so this process's patches miss them):
        the FnApiRunner's multi_processing, or Prism with workers other than its LOOPBACK default."""
        if self.name == PRISM_RUNNER:
            return self.mode.upper() != "LOOPBACK"
        return self.name == FN_API_RUNNER and self.mode == MULTI_PROCESSING


def local_runner(options: PipelineOptions, streaming: bool) -> Optional[LocalRunner]:
    """What a local job runs on; None for a remote runner. Raises OptionsError for a local runner
    that cannot run the job (the FnApiRunner has no streaming)."""
    name = runner_name(options)
    if name not in LOCAL_RUNNERS:
        return None
    if name in DIRECT_RUNNERS:
        name = BUNDLE_RUNNER if streaming else FN_API_RUNNER
    if name == FN_API_RUNNER and streaming:
        raise OptionsError("the FnApiRunner cannot run a stream (Pub/Sub); use the DirectRunner, which runs "
                         "streams on the BundleBasedDirectRunner")
    if name == PRISM_RUNNER:
        return LocalRunner(name, options.view_as(PortableOptions).environment_type or "LOOPBACK")
    if name != FN_API_RUNNER:
        return LocalRunner(name)
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers
    if workers == 0:  # Beam's "one per CPU"
        import multiprocessing

        workers = multiprocessing.cpu_count()
    return LocalRunner(name, direct.direct_running_mode or "in_memory", workers or 1)


def keep_main_session(options: PipelineOptions, asked: bool) -> None:
    """--save_main_session only when asked (flag or caller): Beam's cloudpickle pickles what the
    pipeline uses by value, and no job here relies on the launcher's __main__."""
    setup = options.view_as(SetupOptions)
    setup.save_main_session = bool(setup.save_main_session or asked)


def pinned_runner(options: PipelineOptions, streaming: bool):
    """The runner instance for beam.Pipeline(runner=...): the local runner of local_runner(), built
    as the DirectRunner would build it (the FnApiRunner with the options provisioned to its
    workers); None for every other runner (Beam builds those from --runner)."""
    local = local_runner(options, streaming)
    if local is None or runner_name(options) not in DIRECT_RUNNERS + (FN_API_RUNNER,):
        return None
    if local.out_of_process:
        quiet_worker_startup()
    if local.name == BUNDLE_RUNNER:
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        return BundleBasedDirectRunner()
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


class _StartupNoise(logging.Filter):
    """Drops the two warnings every multi_processing SDK worker logs at start-up, which say
    nothing wrong: our options are unknown to a bare worker ('Discarding unparseable args'; the
    workers read them from the pipeline), and there is no semi-persistent directory locally."""

    _HARMLESS = ("Discarding unparseable args", "No semi_persistent_directory found")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(h in message for h in self._HARMLESS)


def quiet_worker_startup() -> None:
    """Keeps the start-up notes of local worker processes out of the console (idempotent)."""
    forwarded = logging.getLogger("apache_beam.runners.portability.local_job_service")
    if not any(isinstance(f, _StartupNoise) for f in forwarded.filters):
        forwarded.addFilter(_StartupNoise())
