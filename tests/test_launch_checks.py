"""What the launcher catches before a job starts (a SavedModel copied without its weights, outputs
that cannot be written), and manifests that neither lie nor leak: written whole or not at all,
secrets hidden wherever they appear in the options."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from models.serving.model import ModelContractError, load_serving_model
from pipelines import batch_infer, manifest
from pipelines.output_paths import output_path_problems

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def model_copy(penguin_model, tmp_path):
    """A copy of a real exported version directory, to damage."""
    copy = tmp_path / "model" / "1"
    shutil.copytree(penguin_model[0], copy)
    return copy


def test_a_model_copied_without_its_variables_is_refused_naming_what_is_missing(model_copy):
    shutil.rmtree(model_copy / "variables")
    with pytest.raises(ModelContractError, match=r"variables/variables.index is missing"):
        load_serving_model(str(model_copy))


def test_a_model_with_an_empty_weights_file_is_refused(model_copy):
    (shard,) = (model_copy / "variables").glob("variables.data-*")
    shard.write_bytes(b"")
    with pytest.raises(ModelContractError, match=rf"{shard.name} is empty"):
        load_serving_model(str(model_copy))


def test_the_command_stops_before_launch_on_a_model_without_weights(model_copy, tmp_path, capsys):
    shutil.rmtree(model_copy / "variables")
    (tmp_path / "in.jsonl").write_text('{"measurements": [1, 2, 3, 4], "island": 1}\n')
    assert batch_infer.main(["--input", str(tmp_path / "in.jsonl"), "--model", str(model_copy),
                             "--output", str(tmp_path / "out" / "p")]) == 2
    err = capsys.readouterr().err
    assert "variables.index is missing" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_output_under_a_regular_file_is_refused_naming_it(penguin_model, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"measurements": [1, 2, 3, 4], "island": 1}\n')
    (tmp_path / "report.txt").write_text("not a directory")
    assert batch_infer.main(["--input", str(tmp_path / "in.jsonl"), "--model", penguin_model[0],
                             "--output", str(tmp_path / "report.txt" / "out" / "p")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'report.txt'} is a file, not a directory" in err and err.count("is a file") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_output_where_nothing_can_be_created_is_refused():
    (problem,) = output_path_problems(["/proc/no-such-dir/pred", None, "gs://bucket/never/probed"])
    assert problem.startswith("output /proc/no-such-dir/pred: cannot write in /proc/no-such-dir")


def test_a_manifest_that_cannot_be_written_leaves_the_last_one_whole_and_says_so(tmp_path):
    """A real write failure: the child process may write at most 2 KB per file (RLIMIT_FSIZE), so
    its manifest write fails as on a full disk."""
    path = tmp_path / "pred.manifest.json"
    manifest.write_manifest(str(path), {"status": "succeeded", "run": 1})
    script = (
        "import resource, signal, sys\n"
        "from pipelines import manifest\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "try:\n"
        f"    manifest.write_manifest({str(path)!r}, {{'status': 'failed', 'pad': 'x' * 100000}})\n"
        "except manifest.ManifestWriteError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"could not write the run manifest {path}" in done.stdout and "File too large" in done.stdout
    assert json.loads(path.read_text()) == {"status": "succeeded", "run": 1}  # the last one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["pred.manifest.json"]  # no temporary left behind


@pytest.mark.parametrize("name, value, secret, kept", [
    ("azure_connection_string", "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0S2V5PQ==;"
     "EndpointSuffix=core.windows.net", "c2VjcmV0S2V5PQ==", "AccountName=acct"),
    ("input", "https://acct.blob.core.windows.net/c/x.tfrecord?sv=2024&sig=AbC%2Fsecret%3D&se=2027",
     "AbC%2Fsecret%3D", "sv=2024"),
    ("model", "https://example.com/m?token=t0k3n&version=3", "t0k3n", "version=3"),
    ("labels", ["team=ml", "api-token=abc123"], "abc123", "team=ml"),
    ("storage_url", "https://user:hunter2@example.com/data", "hunter2", "user:"),
    ("my_api_key", "sekrit-value", "sekrit-value", None),
])
def test_secrets_are_redacted_wherever_they_appear(name, value, secret, kept):
    redacted = json.dumps(manifest.redact_options({name: value}))
    assert secret not in redacted and manifest.REDACTED in redacted
    if kept:
        assert kept in redacted


def test_redaction_keeps_what_only_looks_like_a_secret_name():
    options = {"model": ["keyword=/models/kw", "tokenizer=/models/tok"], "key_feature": "id",
               "input": ["gs://bucket/data/*.tfrecord"], "labels": ["team=ml", "monkey=george"]}
    assert manifest.redact_options(options) == options


def test_a_keras_file_given_as_a_model_says_to_prepare_it_first(tmp_path, capsys):
    (tmp_path / "clf.keras").write_bytes(b"PK")  # only the name matters: it is refused before it is read
    (tmp_path / "in.jsonl").write_text('{"measurements": [1, 2, 3, 4], "island": 1}\n')
    assert batch_infer.main(["--input", str(tmp_path / "in.jsonl"), "--model", str(tmp_path / "clf.keras"),
                             "--output", str(tmp_path / "out" / "p")]) == 2
    err = capsys.readouterr().err
    assert "is a Keras file, not a SavedModel: export it first with python -m models.prepare" in err
