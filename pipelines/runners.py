"""Which runner a job's options name: local (this process) or remote (Dataflow, Flink, Spark)."""

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

# Runners that execute in this process: emulators, local paths and local workarounds apply.
LOCAL_RUNNERS = tuple(StandardOptions.LOCAL_RUNNERS) + ("direct",)
DATAFLOW_RUNNERS = ("DataflowRunner", "TestDataflowRunner")


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name ('DirectRunner' when none is given), for a name or an instance."""
    runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    return (runner if isinstance(runner, str) else type(runner).__name__).split(".")[-1]


def is_local(options: PipelineOptions) -> bool:
    return runner_name(options) in LOCAL_RUNNERS


def is_dataflow(options: PipelineOptions) -> bool:
    return runner_name(options) in DATAFLOW_RUNNERS
