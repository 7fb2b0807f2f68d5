"""Every command the README and the pages under docs/ show still parses: each `python -m ...` line
of their shell blocks goes through its command's own option parsing and checks, and the Dataflow
ones through a --dry_run (with the model paths pointed at a real local model, since a dry run reads
the models' signatures). An example that stops working fails here, wherever it moved."""

import glob
import os
import re
import shlex

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from models import inspect as inspect_cli
from models import prepare as prepare_cli
from pipelines import batch_infer, stream_infer, to_tfrecord
from pipelines.dataflow import normalize_dry_run_argv
from pipelines.flags import unknown_flag_problems
from pipelines.options import BatchInferOptions, StreamInferOptions, check_options, check_stream_options
from pipelines.runners import runner_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_IMAGE = "us-docker.pkg.dev/my-project/images/tf-beam-inference:1"


def _arguments(line: str, variables: dict):
    """A README command line -> (argv, required argv, fragment): variables expanded; argv with the
    optional [groups] of a synopsis (first alternative: a|b -> a), required argv without them;
    '--flag ...' placeholders dropped; fragment: the line elides flags (...)."""
    for name, value in variables.items():
        line = line.replace(f'"${name}"', value).replace(f"${name}", value)
    line = line.replace('"$IMAGE"', EXAMPLE_IMAGE).replace("$IMAGE", EXAMPLE_IMAGE)
    fragment, argv, required, optional = False, [], [], False
    for token in shlex.split(line, comments=True):
        opens, closes = token.startswith("["), token.endswith("]")
        optional = optional or opens
        token = token.strip("[]")
        if "|" in token and not token.startswith("gs://"):
            token = token.split("|")[0]
        if token == "...":
            fragment = True
            for tokens in (argv, required):
                if tokens and tokens[-1].startswith("--") and "=" not in tokens[-1] and tokens[-1] != "--dry_run":
                    tokens.pop()  # '--runner ...': a placeholder value
        elif token:
            argv.append(token)
            if not optional:
                required.append(token)
        optional = optional and not closes
    return argv, required, fragment


def doc_pages():
    """README.md and every page under docs/: where the commands people copy are shown."""
    pages = [os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)]
    return ["README.md"] + sorted(pages)


def page_text(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def page_commands(page: str):
    text = page_text(page)
    variables = dict(re.findall(r'^(\w+)="([^"]*)"$', text, re.M))  # a page's own COMMON="..."
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\[ \t]*(#[^\n]*)?\n\s*", " ", block)  # continuations, with comments after them
        for line in joined.splitlines():
            match = re.match(r"\s*python -m ([\w.]+)(.*)$", line)
            if match:
                argv, required, fragment = _arguments(match.group(2), variables)
                commands.append(pytest.param(match.group(1), argv, required, fragment,
                                             id=f"{page}: {match.group(1)} {' '.join(argv)}"[:100]))
    return commands


def readme_commands():
    return [command for page in doc_pages() for command in page_commands(page)]


def section(heading: str):
    """(page, text) of the one section of the README or a docs page with this heading, up to the
    next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    found = [(page, page_text(page)) for page in doc_pages() if f"\n{heading}\n" in page_text(page)]
    assert len(found) == 1, f"{heading!r} is on {[page for page, _ in found]}"
    page, text = found[0]
    rest = text.split(f"\n{heading}\n", 1)[1]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), rest, re.M)]
    return page, rest[:ends[0]] if ends else rest


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_entry_point():
    modules = {c.values[0] for c in COMMANDS}
    assert {"pipelines.batch_infer", "pipelines.stream_infer", "pipelines.to_tfrecord", "models.prepare",
            "models.inspect"} <= modules, modules
    assert len(COMMANDS) >= 20
    in_readme = {c.values[0] for c in page_commands("README.md")}
    assert {"pipelines.batch_infer", "pipelines.stream_infer", "models.prepare", "models.inspect"} <= in_readme
    # the pages the README's depth moved to are scanned too, and each of them shows commands
    with_commands = {c.id.split(":", 1)[0] for c in COMMANDS}
    assert {"README.md", "docs/options.md", "docs/sources.md", "docs/streams.md", "docs/dataflow.md",
            "docs/models.md", "docs/graphs.md"} <= with_commands, with_commands


def _with_local_models(argv, model_dir):
    replaced, take = [], False
    for token in argv:
        if take:
            name, sep, _ = token.partition("=")
            token = f"{name}={model_dir}" if sep and "/" not in name else model_dir
        take = token == "--model"
        replaced.append(token)
    return replaced


@pytest.mark.parametrize("module, argv, required, fragment", COMMANDS)
def test_every_readme_command_parses_and_dataflow_ones_dry_run(module, argv, required, fragment, penguin_model,
                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --job_file job.json and the like land here
    if module in ("models.prepare", "models.inspect"):
        parser = (prepare_cli if module == "models.prepare" else inspect_cli).argument_parser()
        parser.parse_args(argv)  # an unknown or malformed flag exits (SystemExit fails the test)
        return
    if module == "pipelines.to_tfrecord":
        parser = to_tfrecord.converter_parser()
        _, beam_args = parser.parse_known_args(argv)
        assert unknown_flag_problems(beam_args) == []
        PipelineOptions(beam_args).get_all_options()
        return
    assert module in ("pipelines.batch_infer", "pipelines.stream_infer"), module
    assert unknown_flag_problems(argv) == []
    options = PipelineOptions(normalize_dry_run_argv(argv))
    shared = options.view_as(BatchInferOptions)
    if fragment:
        return
    options = PipelineOptions(normalize_dry_run_argv(required))  # a synopsis' optional flags may exclude each other
    shared = options.view_as(BatchInferOptions)
    if module == "pipelines.stream_infer":
        check_stream_options(options.view_as(StreamInferOptions), shared)
    elif required and (shared.model or shared.graph):  # without any, the command runs the embedded demo
        check_options(shared)
    if runner_name(options) != "DataflowRunner":
        return
    dry_argv = _with_local_models(required, penguin_model[0])
    if "--dry_run" not in dry_argv:
        dry_argv += ["--dry_run"]
    if module == "pipelines.stream_infer":
        assert stream_infer.run(dry_argv) is None
    else:
        assert batch_infer.run(dry_argv) is not None


def test_the_readme_local_bigquery_example_runs_as_shown(bigquery_emulator, penguin_model, tmp_path, monkeypatch):
    """The docs' client snippet ("A local BigQuery", docs/sources.md) creates and loads the table on
    the local BigQuery, and its command (ports and model directory substituted) scores every row
    into the output table."""
    page, text = section("### A local BigQuery")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    (command,) = [c for c in COMMANDS if "--bigquery_emulator" in c.values[1]]
    assert command.id.startswith(f"{page}:")
    ports = {"http://127.0.0.1:9050": bigquery_emulator.rest_url, "127.0.0.1:9060": bigquery_emulator.grpc_address,
             "http://127.0.0.1:9023": bigquery_emulator.storage_url}
    for shown, real in ports.items():
        snippet = snippet.replace(shown, real)
    namespace = {}
    exec(compile(snippet, page, "exec"), namespace)  # pylint: disable=exec-used
    argv = [ports.get(token, token) for token in _with_local_models(command.values[2], penguin_model[0])]
    monkeypatch.chdir(tmp_path)
    _, counters = batch_infer.run(argv)
    client = namespace["client"]
    scored = list(client.query("SELECT * FROM local.ds.scored").result())
    assert counters["records_read"] == len(namespace["rows"]) == len(scored)
    assert {row["key"] for row in scored} == {r["id"] for r in namespace["rows"]}
    assert all(len(row["m"]["probabilities"]) == 3 for row in scored)
