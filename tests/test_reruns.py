"""A run's outputs are its own (issue 28): a prefix holding another run's shards or manifest is
refused at launch unless --overwrite, which removes them first; the manifest's patterns match
exactly this run's files; the temporary directories of killed and failing runs do not pile up.
Also duplicate keys, counted in the summary and the manifest, and a gs:// model in an offline dry
run refused in one line. Real TFRecord files, a real model, real runs (and a real kill -9)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.pipeline import PipelineVisitor

from models.serving.examples import make_example
from pipelines import batch_infer, output_paths
from tests.helpers import read_jsonl
from tests.test_batch_infer import penguin_values
from transforms.runtime.duplicate_keys import BUCKETS, duplicates_among, hashes_by_bucket, key_hashes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifest_of(out):
    with open(out + ".manifest.json") as f:
        return json.load(f)


def job_args(path, model, out, *more):
    return ["--input", path, "--model", f"clf={model}", "--output", out, "--key_feature", "id", *more]


@pytest.fixture
def penguins(write_tfrecords):
    """300 records with unique ids, as one TFRecord file."""
    values = penguin_values(300)
    return write_tfrecords("in.tfrecord", [make_example(v).SerializeToString() for v in values]), values


def test_a_rerun_with_fewer_shards_is_refused_then_overwrites_exactly(penguin_model, penguins, tmp_path, capsys):
    """The issue's case: 3 shards, then a rerun with 1. Before, the manifest's glob then read every
    row twice. Now the rerun is refused naming the files, and with --overwrite the prefix holds only
    its own shard, which the manifest's glob and file list name exactly."""
    path, values = penguins
    out = str(tmp_path / "out" / "pred")
    assert batch_infer.main(job_args(path, penguin_model[0], out, "--num_shards", "3")) == 0
    first = sorted(glob.glob(out + "-*.jsonl"))
    assert len(first) == 3 and manifest_of(out)["outputs"]["files"]["predictions"] == first
    capsys.readouterr()

    assert batch_infer.main(job_args(path, penguin_model[0], out, "--num_shards", "1")) == 2
    err = capsys.readouterr().err
    assert f"{out} holds another run's outputs" in err and "--overwrite" in err
    assert first[0] in err and out + ".manifest.json" in err
    assert sorted(glob.glob(out + "-*.jsonl")) == first  # nothing touched

    assert batch_infer.main(job_args(path, penguin_model[0], out, "--num_shards", "1", "--overwrite")) == 0
    outputs = manifest_of(out)["outputs"]
    assert sorted(glob.glob(out + "-*.jsonl")) == [out + "-00000-of-00001.jsonl"]
    assert sorted(glob.glob(outputs["predictions"])) == outputs["files"]["predictions"] == [
        out + "-00000-of-00001.jsonl"]
    assert sorted(glob.glob(outputs["dead_letters"])) == outputs["files"]["dead_letters"]
    rows = read_jsonl(outputs["predictions"])
    assert len(rows) == len(values) and sorted(r["key"] for r in rows) == sorted(v["id"] for v in values)
    assert manifest_of(out)["counts"]["records_in"] == len(rows)


def test_the_manifest_glob_ignores_stale_shards_of_another_count(tmp_path):
    """Pure: a stale shard of another count does not match the run's pattern; out/p-2's do not
    match out/p's."""
    prefix = str(tmp_path / "p")
    mine = [f"{prefix}-0000{i}-of-00002.jsonl" for i in range(2)]
    pattern = output_paths.exact_glob(prefix, ".jsonl", mine)
    for path in mine + [f"{prefix}-00000-of-00003.jsonl", f"{prefix}-2-00000-of-00002.jsonl"]:
        open(path, "w").close()
    assert sorted(glob.glob(pattern)) == mine
    assert output_paths.shard_files(prefix) == sorted(mine + [f"{prefix}-00000-of-00003.jsonl"])
    assert output_paths.exact_glob(prefix, ".jsonl", []) == f"{prefix}-?????-of-?????.jsonl"


def test_a_prefix_whose_writing_would_delete_a_neighbours_files_is_refused(penguin_model, penguins, tmp_path,
                                                                          capsys):
    """Found here: before it renames its shards, Beam's writer deletes every PREFIX-*-of-NNNNN.jsonl,
    so a run into out/pred deleted out/pred-2's rows and dead letters (its * spans '-'). Refused
    at launch, --overwrite or not; a neighbour Beam's pattern cannot reach (pred_2) is left alone."""
    path, values = penguins
    neighbour, safe, out = str(tmp_path / "pred-2"), str(tmp_path / "pred_2"), str(tmp_path / "pred")
    for prefix in (neighbour, safe):
        assert batch_infer.main(job_args(path, penguin_model[0], prefix)) == 0
    theirs = sorted(glob.glob(neighbour + "*") + glob.glob(safe + "*"))
    capsys.readouterr()
    assert batch_infer.main(job_args(path, penguin_model[0], out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"{out}: Beam's file writer deletes every file matching {out}-*-of-NNNNN.jsonl" in err
    assert f"{neighbour}-00000-of-00001.jsonl" in err and f"{neighbour}.errors-00000-of-00001.jsonl" in err
    assert safe not in err
    os.makedirs(tmp_path / "own")
    mine = str(tmp_path / "own" / "pred")
    assert batch_infer.main(job_args(path, penguin_model[0], mine)) == 0
    assert sorted(glob.glob(neighbour + "*") + glob.glob(safe + "*")) == theirs
    assert len(read_jsonl(manifest_of(mine)["outputs"]["predictions"])) == len(values)


def test_an_errors_prefix_under_the_output_prefix_is_refused(penguin_model, penguins, tmp_path, capsys):
    """--errors out/pred-errors: the rows' writer would delete this run's own dead letters."""
    path, _ = penguins
    out = str(tmp_path / "pred")
    assert batch_infer.main(job_args(path, penguin_model[0], out, "--errors", out + "-errors")) == 2
    assert f"{out}-errors starts with {out}-" in capsys.readouterr().err


def test_overwrite_removes_only_shards_its_manifest_lists(penguin_model, penguins, tmp_path):
    """The earlier run's files as its manifest lists them (here its dead letters under another
    --errors prefix) go; a file a tampered manifest lists that is no shard of its prefixes stays."""
    path, _ = penguins
    out, errors = str(tmp_path / "out" / "pred"), str(tmp_path / "elsewhere" / "dead")
    assert batch_infer.main(job_args(path, penguin_model[0], out, "--errors", errors)) == 0
    old_dead = glob.glob(errors + "-*.jsonl")
    assert old_dead
    victim = tmp_path / "out" / "keep-me.txt"
    victim.write_text("not a shard")
    record = manifest_of(out)
    record["outputs"]["files"]["predictions"].append(str(victim))
    with open(out + ".manifest.json", "w") as f:
        json.dump(record, f)
    assert batch_infer.main(job_args(path, penguin_model[0], out, "--overwrite")) == 0
    assert not any(os.path.exists(p) for p in old_dead) and victim.read_text() == "not a shard"


def test_overwrite_removes_an_unreadable_manifest_and_the_shards(tmp_path):
    """Without a pipeline: a manifest that is not JSON lists nothing, but is itself removed, with
    every shard of both prefixes (of any suffix); other files stay."""
    out, errors = str(tmp_path / "pred"), str(tmp_path / "pred.errors")
    shards = [out + "-00000-of-00002.parquet", out + "-00001-of-00002.parquet", errors + "-00000-of-00001.jsonl"]
    others = [str(tmp_path / "pred-00000-of-00002.parquet.txt.d" / "x"), str(tmp_path / "notes.txt")]
    for path in shards + others + [out + ".manifest.json"]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("{not json")
    found = output_paths.existing_outputs(out, errors, out + ".manifest.json")
    assert found == sorted(shards + [out + ".manifest.json"])
    assert f"{out} holds another run's outputs (4 files: " in output_paths.earlier_outputs_problem(out, found)
    assert output_paths.remove_earlier_outputs(out, errors, out + ".manifest.json") == found
    assert not any(os.path.exists(p) for p in found) and all(os.path.exists(p) for p in others)


def test_a_killed_runs_temporary_directory_is_removed_by_the_next_run(penguin_model, write_tfrecords, tmp_path):
    """kill -9 while the rows are being written leaves beam-temp-pred-<uuid>; the next run into the
    prefix removes it (before, no run ever did)."""
    values = penguin_values(20000)
    path = write_tfrecords("big.tfrecord", [make_example(v).SerializeToString() for v in values])
    out_dir = tmp_path / "out"
    out = str(out_dir / "pred")
    env = dict(os.environ, PYTHONPATH=ROOT)
    job = subprocess.Popen([sys.executable, "-m", "pipelines.batch_infer", *job_args(path, penguin_model[0], out),
                            "--max_batch_size", "64"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and job.poll() is None and not glob.glob(str(out_dir / "beam-temp-pred-*")):
            time.sleep(0.05)
        left = glob.glob(str(out_dir / "beam-temp-pred-*"))
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(30)
    assert left, "the run finished before it could be killed while writing"
    assert all(os.path.isdir(d) for d in left)
    small = write_tfrecords("small.tfrecord", [make_example(v).SerializeToString() for v in values[:50]])
    # a refused launch removes them too: a full disk is refused, and they may be what fills it
    (out_dir / "pred.manifest.json").write_text("{}")
    assert batch_infer.main(job_args(small, penguin_model[0], out)) == 2
    assert glob.glob(str(out_dir / "beam-temp-*")) == []
    assert batch_infer.main(job_args(small, penguin_model[0], out, "--overwrite")) == 0
    assert glob.glob(str(out_dir / "beam-temp-*")) == []
    assert len(read_jsonl(manifest_of(out)["outputs"]["predictions"])) == 50


class FailsAfterTheRowsAreWritten(beam.Pipeline):
    """A real pipeline that breaks once the rows' files are in Beam's temporary directory (as a
    worker dying before the files are renamed into place); records what the directory held then."""

    seen_then = []

    def run(self, test_runner_api="AUTO"):
        _written_bundles(self) | "Break" >> beam.Map(self._break)  # pylint: disable=expression-not-assigned
        return super().run(test_runner_api)

    @classmethod
    def _break(cls, temp_file):
        """temp_file: a written bundle, PREFIX_DIR/beam-temp-pred-<uuid>/<file>."""
        cls.seen_then.append(sorted(os.listdir(os.path.dirname(os.path.dirname(temp_file)))))
        raise RuntimeError("a worker died before the files were renamed into place")


def _written_bundles(pipeline):
    """The PCollection of the rows' written bundles (WriteImpl/WriteBundles of the rows' sink)."""
    found = []

    class Finder(PipelineVisitor):
        def visit_transform(self, node):
            if node.full_label.endswith("WriteImpl/WriteBundles") and "WriteDeadLetters" not in node.full_label:
                found.append(node.outputs[None])
    pipeline.visit(Finder())
    (bundles,) = found
    return bundles


def test_a_failing_run_removes_its_temporary_directories(penguin_model, penguins, tmp_path):
    path, _ = penguins
    out = str(tmp_path / "out" / "pred")
    FailsAfterTheRowsAreWritten.seen_then = []
    with pytest.raises(Exception, match="a worker died"):
        batch_infer.run(job_args(path, penguin_model[0], out), test_pipeline=FailsAfterTheRowsAreWritten())
    (then,) = FailsAfterTheRowsAreWritten.seen_then
    assert any(name.startswith("beam-temp-pred-") for name in then)  # there was one to remove
    assert glob.glob(str(tmp_path / "out" / "beam-temp-*")) == []
    assert manifest_of(out)["status"] == "failed"


def test_key_hashes_and_duplicate_counts():
    """Pure: equal keys hash alike (in any process: a fixed SipHash key), buckets partition the
    hashes, and duplicates are counted across parts."""
    keys = [f"k{i}" for i in range(500)] + ["k3", "k3", "k499"]
    hashes = key_hashes(keys)
    assert hashes.dtype == np.uint64 and len(hashes) == len(keys)
    assert np.array_equal(key_hashes(["k3"]), hashes[3:4])
    parts = list(hashes_by_bucket(hashes))
    assert sum(len(p) for _, p in parts) == 8 * len(keys) and all(0 <= b < BUCKETS for b, _ in parts)
    assert sum(duplicates_among([p]) for _, p in parts) == len(keys) - len(set(keys)) == 3
    assert duplicates_among([hashes[:250].tobytes(), hashes[250:].tobytes()]) == 3
    assert duplicates_among([]) == 0 and len(key_hashes([])) == 0


def test_duplicate_keys_are_counted_across_files_and_chunks(penguin_model, write_tfrecords, tmp_path, capsys):
    """Ids repeated across two files and many chunks: the count is exact, in the summary and the
    manifest; the rows are all still written (a duplicate is counted, not dropped)."""
    values = penguin_values(400)
    rng = np.random.default_rng(7)
    for v in values[250:]:
        v["id"] = f"p{int(rng.integers(0, 250))}"
    expected = len(values) - len({v["id"] for v in values})
    first = write_tfrecords("a.tfrecord", [make_example(v).SerializeToString() for v in values[:200]])
    write_tfrecords("b.tfrecord", [make_example(v).SerializeToString() for v in values[200:]])
    out = str(tmp_path / "out" / "pred")
    _, counters = batch_infer.run(job_args(os.path.join(os.path.dirname(first), "*.tfrecord"), penguin_model[0],
                                           out, "--max_batch_size", "32"))
    assert counters["duplicate_keys"] == expected == 150
    assert f"duplicate keys {expected:,}" in capsys.readouterr().out
    manifest = manifest_of(out)
    assert manifest["counts"]["duplicate_keys"] == expected
    assert len(read_jsonl(manifest["outputs"]["predictions"])) == len(values)


def test_a_gs_model_in_an_offline_dry_run_is_refused_in_one_line(offline, penguins, tmp_path, capsys):
    path, _ = penguins
    code = batch_infer.main(["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1",
                             "--temp_location", "gs://b/tmp", "--dry_run", "--input", path,
                             "--model", "clf=gs://my-bucket/models/clf", "--output", "gs://b/out/pred"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "clf=gs://my-bucket/models/clf" in err and "give a local copy" in err


def test_duplicate_keys_of_json_lines_are_counted(penguin_model, tmp_path):
    """JSON Lines records are keyed by their reader (the id field), not by the scoring step."""
    values = penguin_values(120)
    for i, v in enumerate(values):
        v["id"] = f"j{i % 100}"  # the last 20 repeat the first 20
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    out = str(tmp_path / "out" / "pred")
    _, counters = batch_infer.run(job_args(str(path), penguin_model[0], out, "--max_batch_size", "16"))
    assert counters["duplicate_keys"] == len(values) - len({v["id"] for v in values}) == 20
    assert manifest_of(out)["counts"]["duplicate_keys"] == 20
