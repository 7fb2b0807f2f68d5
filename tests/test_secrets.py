"""Secrets hidden wherever they appear (issue 28): manifest, dead letters, logs and console.

The redaction rules are pure functions (transforms.runtime.redaction), tested on their own; then
each place a run writes text is checked to apply them: a dead letter's error and source, every
value of a manifest, what a command prints and logs (a traceback that escapes it too), and one
real batch job whose input, model and output paths carry secrets.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from pipelines import batch_infer, manifest
from tests.helpers import read_jsonl
from transforms.records.dead_letters import DECODE, dead_letter
from transforms.runtime.redaction import (REDACTED, is_secret_name, redact_options, redact_text, redact_values,
                                          redacted_console, with_redacted_console)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("text, secret, kept", [
    ("http://user:hunter2@127.0.0.1:9050/bigquery/v2", "hunter2", "http://user:"),
    ("redis://:pw-only-9@cache:6379/0", "pw-only-9", "@cache:6379"),
    # what httplib2 logs (through Beam's retry) for --bigquery_emulator http://admin:hunter2@127.0.0.1:9
    ("httplib2.error.ServerNotFoundError: Unable to find the server at admin:hunter2@127.0.0.1", "hunter2",
     "the server at admin:"),
    ("https://acct.blob.core.windows.net/c/x.tfrecord?sv=2024&sig=AbC%2Fs3cret%3D&se=2027", "AbC%2Fs3cret%3D",
     "sv=2024"),
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0S2V5PQ==;EndpointSuffix=x",
     "c2VjcmV0S2V5PQ==", "AccountName=acct"),
    ("https://example.com/m?token=t0k3n&version=3", "t0k3n", "version=3"),
    ("https://maps.example.com/api?key=AIzaSyExample&q=1", "AIzaSyExample", "q=1"),
    ("login password=pa55word user=bob", "pa55word", "user=bob"),
    ("client secret=shh-123 here", "shh-123", "here"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAEX%2F1&X-Amz-Signature=deadbeef99&X-Amz-Expires=60",
     "deadbeef99", "X-Amz-Expires=60"),
    ("clf=https://host/models/clf?token=nested-t0k", "nested-t0k", "clf=https://host/models/clf?token="),
    ("clf=azfs://acct/c/m;AccountKey=nestedKey==", "nestedKey==", "clf=azfs://acct/c/m"),
    ("clf=gs://user:modelpw@bucket/m", "modelpw", "clf=gs://user:"),
    ('ConnectionError: {"password": "json-pw", "host": "h"}', "json-pw", '"host": "h"'),
    ("bad config {'client_secret': 'repr-secret', 'id': 7}", "repr-secret", "'id': 7"),
])
def test_each_kind_of_secret_is_hidden_and_the_rest_kept(text, secret, kept):
    redacted = redact_text(text)
    assert secret not in redacted and REDACTED in redacted
    assert kept in redacted


@pytest.mark.parametrize("text", [
    "gs://bucket/data/part-*.tfrecord.gz", "key_feature=id", "monkey=george", "keyword=/models/kw",
    "tokenizer=/models/tok", "five=models/five", "https://user@example.com/data", "feature 'x' has 2 values",
    "penguin-0-00001", "a.csv:12", "http://127.0.0.1:9050", "{\"key\": \"row-3\"}", "git@github.com:o/r.git",
    "user@example.com wrote at 10:30", "File \"x.py\", line 3, in <module>\n    @decorated",
])
def test_what_only_looks_like_a_secret_is_kept(text):
    assert redact_text(text) == text


@pytest.mark.parametrize("name, secret", [
    ("password", True), ("api_key", True), ("AccountKey", True), ("X-Amz-Signature", True), ("sig", True),
    ("key", True), ("client-secret", True), ("key_feature", False), ("key_column", False), ("monkey", False),
    ("signature_name", True), ("tokenizer", False), ("input", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_model_name_equals_path_arguments_are_scanned():
    """--model NAME=PATH: the name is not a secret, so the PATH is looked into (it used not to be)."""
    options = redact_options({"model": ["clf=https://h/m?sig=s1g", "other=/models/o"],
                              "feature_spec": "clf=https://h/spec.json?token=t2"})
    text = json.dumps(options)
    assert "s1g" not in text and "t2" not in text
    assert options["model"][1] == "other=/models/o"


def test_values_are_redacted_at_any_depth_keys_and_numbers_kept():
    value = {"inputs": [{"pattern": "https://h/x?sig=deep1", "files": [{"path": "p?token=deep2", "size_bytes": 3}]}],
             "pair": ("a", "password=deep3"), "n": 7, "none": None}
    redacted = redact_values(value)
    assert "deep1" not in json.dumps(redacted) and "deep2" not in json.dumps(redacted)
    assert redacted["pair"] == ("a", f"password={REDACTED}") and redacted["n"] == 7 and redacted["none"] is None
    assert redacted["inputs"][0]["files"][0]["size_bytes"] == 3


def test_a_dead_letter_hides_secrets_in_its_error_and_source():
    row = dead_letter(DECODE, OSError("cannot open https://acct/x.csv?sig=dl-sig-1"), key="x.csv:3", raw=b"line",
                      source={"file": "https://acct/x.csv?sig=dl-sig-1", "line": 3})
    text = json.dumps(row)
    assert "dl-sig-1" not in text
    assert row["source"]["line"] == 3 and row["source"]["file"].startswith("https://acct/x.csv?sig=")
    assert row["key"] == "x.csv:3" and row["error_type"] == "OSError"


def test_a_written_manifest_hides_secrets_in_every_part(tmp_path):
    path = tmp_path / "m.manifest.json"
    manifest.write_manifest(str(path), {
        "status": "failed",
        "inputs": {"patterns": [{"pattern": "azfs://a/c/*.tfrecord?sv=1&sig=in-sig", "files": []}]},
        "models": [{"name": "clf", "path": "https://h/clf?token=model-token", "signature": "serving_default"}],
        "outputs": {"predictions": "https://h/out;AccountKey=out-key", "dead_letters": "o.errors-*.jsonl"},
        "options": manifest.redact_options({"bigquery_emulator": "http://u:opt-pw@127.0.0.1:9050"}),
        "error": "ConnectionError: HTTPConnectionPool(host='127.0.0.1'): http://u:err-pw@127.0.0.1:9050/x"})
    text = path.read_text()
    for secret in ("in-sig", "model-token", "out-key", "opt-pw", "err-pw"):
        assert secret not in text, secret
    written = json.loads(text)
    assert written["models"][0]["signature"] == "serving_default"  # a field named like a secret, not one
    assert written["outputs"]["dead_letters"] == "o.errors-*.jsonl"


def test_what_a_command_prints_and_logs_is_redacted(capsys):
    handler_records = []

    class Keep(logging.Handler):
        def emit(self, record):
            handler_records.append(self.format(record))

    log, keep = logging.getLogger("tests.test_secrets"), Keep()
    log.addHandler(keep)
    stdout = sys.stdout

    @with_redacted_console
    def main():
        print("reading https://h/x?sig=printed-sig")
        print("error: http://u:stderr-pw@h/", file=sys.stderr)
        log.warning("emulator at %s", "http://u:logged-pw@127.0.0.1:9050")
        try:
            raise ValueError("token=traceback-token")
        except ValueError:
            log.exception("failed")
        return 0

    assert main() == 0
    out, err = capsys.readouterr()
    shown = out + err + "\n".join(handler_records)
    for secret in ("printed-sig", "stderr-pw", "logged-pw", "traceback-token"):
        assert secret not in shown, secret
    assert "reading https://h/x?sig=" in out and "emulator at http://u:" in handler_records[0]
    assert "ValueError" in handler_records[1]
    assert sys.stdout is stdout and not getattr(logging.getLogRecordFactory(), "redacting", False)
    log.warning("password=after-the-command")
    log.removeHandler(keep)
    assert "after-the-command" in handler_records[-1]  # restored: only commands redact


def test_nested_redacted_consoles_restore_once():
    factory = logging.getLogRecordFactory()
    with redacted_console():
        inner = sys.stdout
        with redacted_console():
            assert sys.stdout is inner
    assert logging.getLogRecordFactory() is factory


def test_a_traceback_escaping_a_command_is_printed_redacted():
    script = ("from transforms.runtime.redaction import with_redacted_console\n"
              "@with_redacted_console\n"
              "def main():\n"
              "    raise RuntimeError('cannot reach http://admin:escaped-pw@127.0.0.1:9050/x')\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 1 and "RuntimeError: cannot reach http://admin:" in done.stderr
    assert "escaped-pw" not in done.stderr


def test_a_job_on_secret_bearing_paths_keeps_them_out_of_everything_it_writes(penguin_model, tmp_path, capsys):
    """Input, model and output paths with token=/sig= parts: rows and dead letters are written at
    the real paths; the manifest, the dead letters and the console never show the secrets."""
    data = tmp_path / "token=in-s3cret"
    data.mkdir()
    (data / "in.jsonl").write_text('{"measurements": [1, 2, 3, 4], "island": 1}\nnot json\n'
                                   '{"measurements": [4, 3, 2, 1], "island": 0}\n')
    model = tmp_path / "sig=model-s3cret" / "clf"
    shutil.copytree(penguin_model[0], model / "1")
    out_dir = tmp_path / "password=out-s3cret"
    code = batch_infer.main(["--input", str(data / "*.jsonl"), "--model", f"clf={model}",
                             "--output", str(out_dir / "pred"), "--max_dead_letter_fraction", "1"])
    console = "".join(capsys.readouterr())
    assert code == 0, console
    rows, dead = read_jsonl(str(out_dir / "pred-*.jsonl")), read_jsonl(str(out_dir / "pred.errors-*.jsonl"))
    assert len(rows) == 2 and len(dead) == 1 and dead[0]["stage"] == "decode"
    written = {"manifest": (out_dir / "pred.manifest.json").read_text(), "dead letters": json.dumps(dead),
               "console": console}
    for place, text in written.items():
        for secret in ("in-s3cret", "model-s3cret", "out-s3cret"):
            assert secret not in text, (place, secret)
    recorded = json.loads(written["manifest"])
    assert recorded["counts"]["records_in"] == 3 and recorded["models"][0]["version"] == 1
    assert "records in 3; predictions out 2; dead letters 1" in console
