"""Which runner runs a job: Beam's runner names, the local runner every local job is pinned to (even
where Beam's DirectRunner would start Prism), the emulator flags only where their redirection
reaches the workers, file patterns matched on the workers, and when chunks are redistributed."""

import json
import os
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from models.serving.examples import make_example
from pipelines import batch_infer
from pipelines.bigquery_io import activate_emulators
from pipelines.dataflow import prepare_runner_options
from pipelines.inputs import FILES_PER_WORKER, should_redistribute
from pipelines.options import BatchInferOptions, OptionsError
from pipelines.runners import (BUNDLE_RUNNER, FN_API_RUNNER, is_dataflow, is_local, local_runner, pinned_runner,
                               runner_name)
from tests.test_batch_infer import penguin_values
from tests.test_dataflow_entry_points import DATAFLOW, job_of
from transforms.sources.tfrecord import ReadKeyedTFRecords


def options(*argv):
    return PipelineOptions(list(argv))


@pytest.mark.parametrize("given", ["dataflow", "Dataflow", "DATAFLOW", "DataflowRunner", "dataflowrunner",
                                   "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"])
def test_every_spelling_beam_accepts_names_dataflow(given):
    opts = options("--runner", given)
    assert runner_name(opts) == "DataflowRunner" and is_dataflow(opts) and not is_local(opts)


@pytest.mark.parametrize("given, name", [(None, "DirectRunner"), ("direct", "DirectRunner"),
                                         ("fnapirunner", "FnApiRunner"), ("Prism", "PrismRunner"),
                                         ("FlinkRunner", "FlinkRunner")])
def test_local_and_other_runner_names(given, name):
    opts = options(*(["--runner", given] if given else []))
    assert runner_name(opts) == name
    assert is_local(opts) == (name != "FlinkRunner")


def test_lowercase_dataflow_gets_the_dataflow_preparation():
    opts = options("--runner", "dataflow", "--project", "p", "--region", "us-central1",
                   "--temp_location", "gs://my-bucket/tmp", "--dry_run=True")
    prepare_runner_options(opts, ["gs://my-bucket/in/*"])
    assert "use_runner_v2" in opts.get_all_options()["experiments"]


def test_the_direct_runner_is_pinned_for_batch_and_for_streams():
    batch = local_runner(options(), streaming=False)
    assert (batch.name, batch.mode, batch.workers, batch.out_of_process) == (FN_API_RUNNER, "in_memory", 1, False)
    assert local_runner(options(), streaming=True).name == BUNDLE_RUNNER
    assert type(pinned_runner(options(), streaming=False)).__name__ == FN_API_RUNNER
    assert type(pinned_runner(options(), streaming=True)).__name__ == BUNDLE_RUNNER
    multi = local_runner(options("--direct_running_mode=multi_processing", "--direct_num_workers=2"), False)
    assert (multi.workers, multi.out_of_process) == (2, True)
    assert multi.describe() == "FnApiRunner (multi_processing, 2 workers)"
    assert local_runner(options("--runner", "DataflowRunner"), False) is None
    assert pinned_runner(options("--runner", "BundleBasedDirectRunner"), False) is None  # Beam builds it
    with pytest.raises(ValueError, match="cannot run a stream"):
        local_runner(options("--runner", "FnApiRunner"), streaming=True)


def test_prism_when_asked_for_by_name_and_where_its_workers_run():
    loopback = local_runner(options("--runner", "PrismRunner"), streaming=True)
    assert (loopback.describe(), loopback.out_of_process) == ("PrismRunner (LOOPBACK workers)", False)
    assert local_runner(options("--runner", "prism", "--environment_type", "PROCESS"), False).out_of_process
    assert pinned_runner(options("--runner", "PrismRunner"), False) is None  # Beam builds what was named


def test_beam_alone_would_run_on_prism_when_it_is_available(prism_available):
    """The simulation works: an unpinned DirectRunner pipeline goes to Prism."""
    with beam.Pipeline(options=options()) as p:
        _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x)
    assert len(prism_available) == 1


def test_a_local_batch_job_runs_on_the_fn_api_runner_even_when_prism_is_available(
        prism_available, penguin_model, write_tfrecords, tmp_path):
    version_dir, _ = penguin_model
    path = write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in penguin_values(30)])
    out = str(tmp_path / "pred")
    _, counters = batch_infer.run(["--input", path, "--model", version_dir, "--output", out])
    assert prism_available == []
    assert counters["predictions_written"] == 30
    with open(out + ".manifest.json") as f:
        run = json.load(f)["run"]
    assert run["runner"] == "FnApiRunner (in_memory, 1 worker)" and run["scoring_processes"] == 1
    assert run["redistribute"] is False  # one worker process: nothing to spread


def batch_opts(*argv):
    return PipelineOptions(list(argv)).view_as(BatchInferOptions)


def test_the_bigquery_emulator_is_refused_where_its_redirection_misses_the_workers():
    multi = local_runner(options("--direct_running_mode=multi_processing", "--direct_num_workers=2"), False)
    with pytest.raises(OptionsError, match="other processes"):
        activate_emulators(batch_opts("--bigquery_emulator", "http://127.0.0.1:9050"), "local", multi)
    with pytest.raises(OptionsError, match="remote workers"):
        activate_emulators(batch_opts("--storage_emulator", "http://127.0.0.1:9023"), "local", None)


def test_the_storage_emulator_reaches_worker_processes_through_the_environment(monkeypatch):
    from pipelines.local import bigquery_emulator

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    multi = local_runner(options("--direct_running_mode=multi_processing", "--direct_num_workers=2"), False)
    try:
        assert activate_emulators(batch_opts("--storage_emulator", "http://127.0.0.1:9023"), "local", multi)
        assert os.environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"  # what worker processes inherit
    finally:
        bigquery_emulator.restore()
    assert "STORAGE_EMULATOR_HOST" not in os.environ


@pytest.mark.parametrize("setting, workers, files, gpu, expected", [
    ("auto", 1, 1, False, False),                        # one process: a shuffle for nothing
    ("auto", 2, 1, False, True),                         # one big file, two workers
    ("auto", 2, FILES_PER_WORKER * 2, False, False),     # enough files to go round
    ("auto", 2, FILES_PER_WORKER * 2, True, True),       # GPU workers: keep every GPU busy
    ("auto", None, 1000, False, True),                   # an autoscaled fleet: not known at launch
    ("auto", 8, None, False, True),                      # patterns not listed (a dry run)
    ("no", 2, 1, False, False),
    ("yes", 1, 100, False, True),
])
def test_when_chunks_are_redistributed(setting, workers, files, gpu, expected):
    assert should_redistribute(setting, workers, files, gpu) is expected


def test_a_source_that_splits_its_reads_is_not_redistributed_unless_asked():
    assert should_redistribute("auto", 8, None, gpu=True, source_splits=True) is False
    assert should_redistribute("yes", 8, None, source_splits=True) is True


def test_a_bad_redistribute_value_is_refused():
    with pytest.raises(OptionsError, match="--redistribute 'maybe'"):
        should_redistribute("maybe", 1, 1)


def test_the_job_graph_holds_the_patterns_not_the_files(write_tfrecords, tmp_path):
    """A pattern over 300 files makes the same job graph as one over a single file."""
    def graph_size(directory, files):
        os.makedirs(tmp_path / directory)
        for i in range(files):
            write_tfrecords(f"{directory}/part-{i:05d}.tfrecord", [b"x"])
        p = beam.Pipeline(options=options())
        _ = p | ReadKeyedTFRecords([str(tmp_path / directory / "part-*.tfrecord")])
        return len(p.to_runner_api().SerializeToString())
    # the same up to a few bytes (ids and pickles vary a little); 300 inlined paths would add ~25 KB
    assert abs(graph_size("a", 300) - graph_size("b", 1)) < 100


def test_an_offline_dry_run_reads_and_writes_gs_paths_within_seconds(offline, penguin_model, tmp_path, capsys):
    version_dir, _ = penguin_model
    job_file = tmp_path / "job.json"
    started = time.monotonic()
    assert batch_infer.main([a if a != "DataflowRunner" else "dataflow" for a in DATAFLOW] + [
        "--input", "gs://my-bucket/data/part-*.tfrecord.gz", "--model", version_dir,
        "--output", "gs://my-bucket/out/pred", "--job_file", str(job_file)]) == 0
    assert time.monotonic() - started < 30  # listing gs:// offline retried for 120 s
    options_in_job = job_of(job_file)["environment"]["sdkPipelineOptions"]["options"]
    assert options_in_job["input"] == ["gs://my-bucket/data/part-*.tfrecord.gz"]
    assert "JOB_TYPE_BATCH" in capsys.readouterr().out


def test_a_local_empty_glob_still_fails_before_launch_in_a_dry_run(offline, penguin_model, tmp_path, capsys):
    version_dir, _ = penguin_model
    assert batch_infer.main(DATAFLOW + ["--input", "gs://my-bucket/data/*.tfrecord", "--input",
                                        str(tmp_path / "none-*.tfrecord"), "--model", version_dir,
                                        "--output", "gs://my-bucket/out/pred"]) == 2
    assert "matches no files" in capsys.readouterr().err
