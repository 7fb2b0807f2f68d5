"""Dataflow runs: worker packaging, GPU workers, and an offline dry run that shows the job.

    argv = normalize_dry_run_argv(argv)                # a bare --dry_run becomes --dry_run=True
    options = PipelineOptions(argv)
    warnings = prepare_runner_options(options, paths)   # before beam.Pipeline(options=options)
    p = beam.Pipeline(options=options); build(p)
    if is_dry_run(options):                             # builds the job offline, submits nothing
        job = report_dry_run(p, options)                # = dry_run_job + write_job_file + summary
    else:
        p.run()

The dry run: DataflowRunner's own dry run stops before the job's
environment is built, so it is built here the way DataflowApplicationClient.create_job_description
does, minus staging: package names come from the pipeline's artifacts, nothing is uploaded.
"""

import hashlib
import json
import os
import re
import sys
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, TextIO

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                  TestOptions, WorkerOptions)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

from models.serving.op_libraries import requirement_name, worker_requirements
from pipelines.gpu_options import (SINGLE_SDK_PROCESS_EXPERIMENT, DataflowJobOptions, DataflowOptionsError,
                                   gpu_workers, parse_accelerator)
from pipelines.runners import is_dataflow, is_local, runner_name
from transforms.sources.files import is_remote

REPO_SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
_NAMED = re.compile(r"^[A-Za-z_][\w.-]*=")  # --model NAME=DIR


def is_dry_run(options: PipelineOptions) -> bool:
    return _as_bool(options.view_as(TestOptions).dry_run)


def _as_bool(value) -> bool:  # Beam's --dry_run takes a string: "False" must not mean True
    return value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def normalize_dry_run_argv(argv: Sequence[str]) -> List[str]:
    """Beam's --dry_run needs a value; lets users write a bare --dry_run."""
    out = list(argv)
    for i, arg in enumerate(out):
        nxt = out[i + 1].lower() if i + 1 < len(out) else ""
        if arg == "--dry_run" and nxt not in ("true", "false", "1", "0", "yes", "no"):
            out[i] = "--dry_run=True"
    return out


def prepare_runner_options(options: PipelineOptions, paths: Iterable[Optional[str]] = (),
                           models: Sequence[str] = (), op_modules: Sequence[str] = ()) -> List[str]:
    """Fills in what a Dataflow job needs (setup_file or container, runner v2, GPU settings, the
    op libraries its models need) and returns warnings. Raises DataflowOptionsError for what would
    fail or stall. `paths`: the inputs, models and outputs workers read or write (not
    launcher-only files like --manifest); `models`: the job's model version directories and
    `op_modules` its --op_library modules, whose packages the workers install (worker_requirements)."""
    job = options.view_as(DataflowJobOptions)
    options.view_as(TestOptions).dry_run = dry_run = is_dry_run(options)
    runner = runner_name(options)
    if not is_dataflow(options):
        if dry_run:
            raise DataflowOptionsError(f"--dry_run builds a Dataflow job without submitting it; it needs "
                                       f"--runner DataflowRunner (the {runner} would really run the job)")
        warnings = [f"--job_file applies to DataflowRunner only; ignored by the {runner}"] if job.job_file else []
        if job.gpu and is_local(options):
            warnings.append(f"--gpu {job.gpu} sets Dataflow accelerators only; ignored by the {runner}")
        elif job.gpu:
            warnings.append(f"--gpu {job.gpu} sets Dataflow accelerators only: provision GPU machines for "
                            f"the {runner} yourself (workers without a GPU refuse to run)")
        return warnings
    _check_cloud(options)
    warnings = _packaging(options) + add_worker_requirements(options, worker_requirements(models, op_modules))
    options.view_as(DebugOptions).add_experiment("use_runner_v2")
    if job.gpu:
        warnings += gpu_workers(options)
    local = list(dict.fromkeys(p for p in (_path_of(p) for p in paths if p) if not is_remote(p)))
    if local and not dry_run:
        raise DataflowOptionsError(f"Dataflow workers cannot read this machine's files: {', '.join(local)} "
                                   "(use gs:// paths; --dry_run accepts local paths)")
    if local:
        warnings.append(f"local paths {', '.join(local)}: Dataflow workers will not see them; a real run "
                        "needs gs:// paths")
    setup = options.view_as(SetupOptions)
    if dry_run and setup.requirements_file and setup.requirements_cache is None:
        setup.requirements_cache = "skip"  # no `pip download` of the requirements offline
    if job.job_file and not dry_run and not options.view_as(GoogleCloudOptions).template_location:
        options.view_as(DebugOptions).dataflow_job_file = job.job_file  # Beam writes it on submission
    return warnings


def _path_of(arg: str) -> str:
    return arg.split("=", 1)[1] if _NAMED.match(arg) and "://" not in arg.split("=", 1)[0] else arg


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def bucket_name_problem(path: Optional[str]) -> str:
    """'; ...' saying why the bucket of a gs:// path is not a valid bucket name, or ''."""
    if not path or not path.startswith("gs://"):
        return ""
    bucket = path[len("gs://"):].split("/", 1)[0]
    if _BUCKET.match(bucket) and ("." in bucket or len(bucket) <= 63):
        return ""
    return (f"; {bucket!r} is not a bucket name: 3 to 63 characters of lowercase letters, digits, '-', "
            "'_' and '.', starting and ending with a letter or digit")


def _check_cloud(options: PipelineOptions) -> None:
    cloud = options.view_as(GoogleCloudOptions)
    problems = [f"--{name} is required with DataflowRunner" for name in ("project", "region")
                if not getattr(cloud, name)]
    validator = PipelineOptionsValidator(options, None)
    if validator.validate_gcs_path(cloud, "temp_location") and validator.validate_gcs_path(cloud, "staging_location"):
        # Otherwise Beam tries to create a default bucket, which stalls for minutes offline.
        problems.append(f"--temp_location must be a gs://BUCKET/PATH Dataflow can write to "
                        f"(got {cloud.temp_location!r}{bucket_name_problem(cloud.temp_location)})")
    if problems:
        raise DataflowOptionsError("; ".join(problems))


def _packaging(options: PipelineOptions) -> List[str]:
    """Workers get our packages from the container image (docker/Dockerfile installs them) or, with
    Dataflow's stock image, from the sdist of setup.py (--setup_file). An explicit --setup_file
    with a container overlays the local code on the image's."""
    setup = options.view_as(SetupOptions)
    if options.view_as(WorkerOptions).sdk_container_image or setup.setup_file:
        return []
    if not os.path.isfile(REPO_SETUP_PY):
        return [f"no setup.py at {REPO_SETUP_PY}: workers will lack tf-beam-inference; pass --setup_file "
                "or --sdk_container_image"]
    setup.setup_file = REPO_SETUP_PY
    return []


def add_worker_requirements(options: PipelineOptions, requirements: Sequence[str]) -> List[str]:
    """Makes the workers pip-install `requirements` (the op libraries the models need:
    'tensorflow-text==2.21.1'): a requirements file of the user's --requirements_file lines, if
    any, then these (a package the user's file names already is left as they pin it), set as
    --requirements_file. Beam stages it with the wheels it downloads at launch, and the workers'
    boot installs them before the job's code runs. Returns warnings."""
    if not requirements:
        return []
    setup = options.view_as(SetupOptions)
    lines = []
    if setup.requirements_file:
        with open(setup.requirements_file, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
    named = {requirement_name(line) for line in lines}
    added = [r for r in requirements if requirement_name(r) not in named]
    if not added:
        return []
    path = os.path.join(tempfile.mkdtemp(prefix="tfinfer-requirements-"), "requirements.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines + ["# the op libraries the job's models need (tf-beam-inference)"] + added) + "\n")
    setup.requirements_file = path
    if options.view_as(WorkerOptions).sdk_container_image:
        return [f"the models need {', '.join(added)}: workers pip-install them at start unless the image "
                "has them (add them to the image)"]
    return []


def dry_run_job(pipeline, options: Optional[PipelineOptions] = None) -> Dict:
    """Builds the Dataflow job of `pipeline` without submitting or staging anything and returns
    the job description Dataflow would receive (JSON as a dict). Run prepare_runner_options first."""
    from apache_beam.runners.dataflow.internal import apiclient
    from apache_beam.runners.internal import names as shared_names

    options = options or pipeline.options
    if not is_dataflow(options):
        raise DataflowOptionsError("a dry run builds a Dataflow job: give --runner DataflowRunner")
    options.view_as(TestOptions).dry_run = True
    job = pipeline.run().job  # DataflowRunner: the job with name and type only
    overrides = options.view_as(WorkerOptions).sdk_harness_container_image_overrides or []
    apiclient.DataflowApplicationClient._apply_sdk_environment_overrides(  # pylint: disable=protected-access
        job.proto_pipeline, dict(o.split(",", 1) for o in overrides), job.options)
    serialized = job.proto_pipeline.SerializeToString()
    job.proto.environment = apiclient.Environment(
        packages=staged_names(job.proto_pipeline), options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,  # pylint: disable=protected-access
        proto_pipeline_staged_url=FileSystems.join(job.google_cloud_options.staging_location,
                                                   shared_names.STAGED_PIPELINE_FILENAME),
        proto_pipeline=job.proto_pipeline, pipeline_proto_hash=hashlib.sha256(serialized).hexdigest()).proto
    return json.loads(job.json())


def report_dry_run(pipeline, options: PipelineOptions, out: Optional[TextIO] = None) -> Dict:
    """The whole --dry_run: builds the job, writes --job_file if given, prints the summary."""
    out = out or sys.stdout
    job = dry_run_job(pipeline, options)
    path = options.view_as(DataflowJobOptions).job_file
    print(format_summary(summarize_job(job)), file=out)
    print(f"dry run: nothing submitted; job description in {write_job_file(path, job)}" if path
          else "dry run: nothing submitted (--job_file PATH writes the job description)", file=out)
    return job


def staged_names(proto_pipeline) -> List[str]:
    """The files a real submission would stage (workflow.tar.gz for --setup_file, ...)."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2 as api

    names = []
    for _, env in sorted(proto_pipeline.components.environments.items()):
        for dep in env.dependencies:
            if dep.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                name = api.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
            else:
                name = os.path.basename(api.ArtifactFilePayload.FromString(dep.type_payload).path)
            names += [name] if name not in names else []
    return names


def write_job_file(path: str, job: Dict) -> str:
    text = json.dumps(job, indent=2, sort_keys=True) + "\n"
    if "://" in path:
        with FileSystems.create(path) as f:
            f.write(text.encode("utf-8"))
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def summarize_job(job: Dict) -> Dict:
    """What a user checks before submitting: type, accelerator, image, experiments, workers."""
    env = job.get("environment", {})
    pool = (env.get("workerPools") or [{}])[0]
    opts = env.get("sdkPipelineOptions", {}).get("options", {})
    service = list(env.get("serviceOptions", []))
    experiments = list(env.get("experiments", []))
    accelerators = [parse_accelerator(o) for o in service if o.startswith("worker_accelerator=")]
    return {
        "name": job.get("name"), "type": job.get("type"), "streaming": job.get("type") == "JOB_TYPE_STREAMING",
        "project": opts.get("project"), "region": opts.get("region"),
        "accelerator": accelerators[0] if accelerators else None, "service_options": service,
        "experiments": experiments, "single_sdk_process": SINGLE_SDK_PROCESS_EXPERIMENT in experiments,
        "container_image": pool.get("workerHarnessContainerImage"),
        "sdk_harness": [{"image": i.get("containerImage"), "environment": i.get("environmentId"),
                         "single_core_per_container": i.get("useSingleCorePerContainer", False)}
                        for i in pool.get("sdkHarnessContainerImages", [])],
        "machine_type": pool.get("machineType"), "num_workers": pool.get("numWorkers"),
        "max_num_workers": pool.get("autoscalingSettings", {}).get("maxNumWorkers"),
        "disk_size_gb": pool.get("diskSizeGb"), "threads_per_worker": pool.get("numThreadsPerWorker"),
        "packages": [p.get("name") for p in pool.get("packages", [])],
        "setup_file": opts.get("setup_file"), "temp_location": opts.get("temp_location"),
        "requirements": requirement_lines(opts.get("requirements_file")),
    }


def requirement_lines(path: Optional[str]) -> List[str]:
    """The requirements a --requirements_file on this machine names (its lines without comments)."""
    if not path or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def format_summary(summary: Dict) -> str:
    def show(value):
        if isinstance(value, dict):
            return " ".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, list):
            return "; ".join(show(v) for v in value) or "-"
        return "-" if value in (None, "") else str(value)
    return "\n".join(f"{key + ':':<19}{show(value)}" for key, value in summary.items())
