"""Graph files stay in their folder and model directories are read only for their own files (issue 28).

- A graph file's paths, `file://` and `gs://` ones too, are refused outside its directory without
  --allow_outside_paths (labels: file:///etc/hosts once read /etc/hosts into rows).
- Its post-processing steps are the project's (classify, regress, keep); a `function:` step (any
  importable callable: pydoc:pipepager runs a shell command) is refused, before anything is
  imported, without --allow_graph_functions.
- A model directory with a symbolic link out of it (/dev/zero hung the launch for ever, /etc
  crashed it) or a special file in it is refused at launch naming the entry, never read. The
  cases that would hang if the check failed run in a subprocess under a timeout.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from models.serving import layout
from models.serving.examples import make_example
from models.serving.fingerprint import model_files, saved_model_fingerprint
from models.serving.model import ModelContractError, load_serving_model
from pipelines import batch_infer
from transforms.graph.file import load_graph_file
from transforms.graph.model import GraphError
from transforms.graph.postprocessors import CallFunction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_graph(directory, config) -> str:
    path = directory / "graph.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def graph_home(graph_models, tmp_path):
    """A graph file's directory holding a copy of the `five` model (x -> 5x) under models/five."""
    home = tmp_path / "graphs"
    shutil.copytree(graph_models["five"][0], home / "models" / "five")
    return home


def classify_five(labels):
    return {"models": [{"name": "five", "path": "models/five", "postprocess": [
        {"classify": {"output": "y", "threshold": 0.5, "labels": labels}}]}]}


@pytest.mark.parametrize("path", ["file:///etc/hosts", "FILE:///etc/hostname", "gs://bucket/labels.txt",
                                  "https://example.com/labels.txt", "file://../outside.txt"])
def test_scheme_paths_outside_the_graph_folder_are_refused(graph_home, path):
    graph = write_graph(graph_home, classify_five(path))
    with pytest.raises(GraphError, match=f"model 'five': labels: path '{path}' leads outside the graph file's "
                                         "directory .*--allow_outside_paths"):
        load_graph_file(graph)


def test_a_file_url_inside_the_folder_is_a_path_like_the_rest(graph_home, tmp_path):
    (graph_home / "labels.txt").write_text("low\nhigh\n")
    graph = load_graph_file(write_graph(graph_home, classify_five(f"file://{graph_home}/labels.txt")))
    assert graph.nodes[0].postprocess[0].labels == ("low", "high")
    outside = tmp_path / "far-labels.txt"
    outside.write_text("no\nyes\n")
    trusted = load_graph_file(write_graph(graph_home, classify_five(f"file://{outside}")), allow_outside_paths=True)
    assert trusted.nodes[0].postprocess[0].labels == ("no", "yes")


LABEL_CHECKS = textwrap.dedent("""
    import sys
    from transforms.graph.file import load_graph_file
    from transforms.graph.model import GraphError
    for graph, trusted in ((sys.argv[1], False), (sys.argv[2], True)):
        try:
            load_graph_file(graph, allow_outside_paths=trusted)
            print("READ")
        except GraphError as e:
            print("REFUSED", e)
""")


def test_special_files_are_never_read_as_labels_trusted_or_not(graph_home, tmp_path):
    """A FIFO inside the folder, /dev/zero with --allow_outside_paths: refused, never opened (in a
    subprocess under a timeout: opening either would block for ever)."""
    os.mkfifo(graph_home / "labels.pipe")
    pipe = write_graph(graph_home, classify_five("labels.pipe"))
    (tmp_path / "trusted").mkdir()
    shutil.copytree(graph_home / "models", tmp_path / "trusted" / "models")
    zero = write_graph(tmp_path / "trusted", classify_five("/dev/zero"))
    done = subprocess.run([sys.executable, "-c", LABEL_CHECKS, pipe, zero], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
    lines = [line for line in done.stdout.splitlines() if line.startswith(("READ", "REFUSED"))]
    assert len(lines) == 2, done.stdout + done.stderr[-2000:]
    assert "labels: path 'labels.pipe' is a special file" in lines[0]
    assert "labels: path '/dev/zero' is a special file" in lines[1]


def test_a_model_path_given_as_a_file_url_out_of_the_folder_is_refused(graph_models, graph_home):
    graph = write_graph(graph_home, {"models": [{"name": "far", "path": f"file://{graph_models['ten'][0]}"}]})
    with pytest.raises(GraphError, match="model 'far': path 'file://.*' leads outside"):
        load_graph_file(graph)
    assert load_graph_file(graph, allow_outside_paths=True).nodes[0].model.path == graph_models["ten"][0]


def test_the_cli_refuses_a_graph_reading_etc_hosts_before_the_job_starts(graph_home, write_tfrecords, capsys):
    path = write_tfrecords("in.tfrecord", [make_example({"x": [1.0]}).SerializeToString()])
    out = graph_home / "out" / "pred"
    code = batch_infer.main(["--input", path, "--graph", write_graph(graph_home, classify_five("file:///etc/hosts")),
                             "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "labels: path 'file:///etc/hosts' leads outside the graph file's directory" in err
    assert not (graph_home / "out").exists()  # nothing written, nothing read


def payload_module(tmp_path, monkeypatch):
    """A module that leaves a marker file when it is imported, on sys.path: (its name, the marker)."""
    marker = tmp_path / "imported.marker"
    name = f"graph_payload_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("imported")

        def add_one(outputs):
            return {{"y": outputs["y"] + 1}}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


@pytest.mark.parametrize("step", [lambda name: f"{name}:add_one", lambda name: {"name": f"{name}:add_one"},
                                  lambda name: "pydoc:pipepager"])
def test_function_steps_are_refused_unimported_without_the_flag(graph_home, tmp_path, monkeypatch, step):
    name, marker = payload_module(tmp_path, monkeypatch)
    config = {"models": [{"name": "five", "path": "models/five", "postprocess": [{"function": step(name)}]}]}
    with pytest.raises(GraphError, match="model 'five': function step .* refused: .*--allow_graph_functions"):
        load_graph_file(write_graph(graph_home, config))
    assert not marker.exists() and name not in sys.modules


def test_function_steps_run_with_the_flag(graph_home, tmp_path, monkeypatch):
    name, marker = payload_module(tmp_path, monkeypatch)
    config = {"models": [{"name": "five", "path": "models/five", "postprocess": [{"function": f"{name}:add_one"}]}]}
    graph = load_graph_file(write_graph(graph_home, config), allow_functions=True)
    assert isinstance(graph.nodes[0].postprocess[0], CallFunction) and marker.exists()


def test_the_cli_refuses_a_function_step_and_runs_it_with_the_flag(graph_home, tmp_path, monkeypatch,
                                                                   write_tfrecords, capsys):
    name, marker = payload_module(tmp_path, monkeypatch)
    path = write_tfrecords("in.tfrecord", [make_example({"x": [float(i)]}).SerializeToString() for i in range(3)])
    graph = write_graph(graph_home, {"models": [{"name": "five", "path": "models/five",
                                                 "postprocess": [{"function": f"{name}:add_one"}]}]})
    args = ["--input", path, "--graph", graph, "--output", str(tmp_path / "out" / "pred")]
    assert batch_infer.main(args) == 2
    assert "--allow_graph_functions" in capsys.readouterr().err and not marker.exists()
    assert batch_infer.main(args + ["--allow_graph_functions"]) == 0
    rows = sorted(json.loads(line)["five"]["y"][0] for p in (tmp_path / "out").glob("pred-*.jsonl")
                  for line in p.read_text().splitlines())
    assert rows == [5.0 * i + 1 for i in range(3)]


def model_with(tmp_path, source, name, make):
    """A copy of the model at source with one entry added by make(version_dir)."""
    version_dir = tmp_path / name / "1"
    shutil.copytree(source, version_dir)
    for directory in ("assets", "assets.extra"):
        os.makedirs(version_dir / directory, exist_ok=True)
    make(version_dir)
    return version_dir


HOSTILE = {
    "zero": lambda d: os.symlink("/dev/zero", d / "assets.extra" / "zero.bin"),
    "pb_zero": lambda d: (os.remove(d / "saved_model.pb"), os.symlink("/dev/zero", d / "saved_model.pb")),
    "etc": lambda d: os.symlink("/etc", d / "assets" / "etc"),
    "fifo": lambda d: os.mkfifo(d / "assets" / "pipe"),
    "up": lambda d: os.symlink("../../../outside.txt", d / "variables" / "up"),
    "dangling": lambda d: os.symlink(d / "nowhere", d / "assets" / "dangling"),
}


@pytest.fixture
def hostile_models(graph_models, tmp_path):
    (tmp_path / "outside.txt").write_text("not the model's")
    return {name: model_with(tmp_path, graph_models["five"][0], name, make) for name, make in HOSTILE.items()}


def test_unsafe_entries_name_each_link_and_special_file_without_reading_them(hostile_models):
    expected = {"zero": "zero.bin is a symbolic link to /dev/zero, outside the model directory",
                "pb_zero": "saved_model.pb is a symbolic link to /dev/zero, outside",
                "etc": "assets/etc is a symbolic link to /etc, outside",
                "fifo": "assets/pipe is a named pipe (FIFO), not a regular file",
                "up": "variables/up is a symbolic link to ../../../outside.txt, outside",
                "dangling": "assets/dangling is a symbolic link to ", }
    for name, version_dir in hostile_models.items():
        problems = layout.unsafe_entries(str(version_dir))
        assert len(problems) == 1 and expected[name] in problems[0], (name, problems)
        listed = [os.path.relpath(p, version_dir) for p, _ in model_files(str(version_dir))]
        assert all(not p.startswith(("assets/etc", "assets/pipe", "variables/up", "assets/dangling"))
                   and p != "assets.extra/zero.bin" for p in listed), (name, listed)


def test_links_inside_the_model_directory_and_a_linked_version_directory_still_load(graph_models, tmp_path):
    real = tmp_path / "store" / "five-v1"
    shutil.copytree(graph_models["five"][0], real)
    os.makedirs(real / "assets", exist_ok=True)
    os.symlink("../saved_model.pb", real / "assets" / "same.pb")  # inside: fine, and fingerprinted
    base = tmp_path / "served" / "five"
    base.mkdir(parents=True)
    os.symlink(real, base / "1")  # the version directory itself may be a link (its target is the model)
    model = load_serving_model(str(base), "five")
    assert model.path == str(base / "1") and layout.unsafe_entries(model.path) == []
    files = [os.path.relpath(p, model.path) for p, _ in model_files(model.path)]
    assert "assets/same.pb" in files
    assert saved_model_fingerprint(model.path)["files"] == len(files)


CHECKS = textwrap.dedent("""
    import contextlib, io, json, sys
    from models.serving.fingerprint import saved_model_fingerprint
    from models.serving.model import ModelContractError, load_serving_model
    from models import inspect
    from pipelines import batch_infer

    cases, data, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    results = {}
    for name, version_dir in cases.items():
        found = {}
        try:
            load_serving_model(version_dir, "clf")
            found["load"] = "loaded"
        except ModelContractError as e:
            found["load"] = str(e)
        try:
            saved_model_fingerprint(version_dir)
            found["fingerprint"] = "read"
        except OSError as e:  # layout.UnsafeModelError
            found["fingerprint"] = str(e)
        for command, argv in (("inspect", [version_dir]),
                              ("batch_infer", ["--input", data, "--model", "clf=" + version_dir,
                                               "--output", out + "/" + name])):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = getattr(inspect if command == "inspect" else batch_infer, "main")(argv)
            found[command] = [code, err.getvalue()]
        results[name] = found
    print("RESULTS " + json.dumps(results))
""")


def test_hostile_model_directories_are_refused_at_launch_naming_the_link(hostile_models, write_tfrecords,
                                                                         tmp_path):
    """/dev/zero as a file or as saved_model.pb, a link to /etc, a FIFO, a link up and out, a
    dangling link: load, fingerprint, models.inspect and batch_infer all refuse, naming the entry,
    within the timeout (the /dev/zero ones used to hang for ever)."""
    data = write_tfrecords("in.tfrecord", [make_example({"x": [1.0]}).SerializeToString()])
    cases = {name: str(path) for name, path in hostile_models.items()}
    done = subprocess.run([sys.executable, "-c", CHECKS, json.dumps(cases), data, str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS ", 1)[1])
    for name, found in results.items():
        entry = next(p for p in ("zero.bin", "saved_model.pb", "assets/etc", "assets/pipe", "variables/up",
                                 "assets/dangling") if p in layout.unsafe_entries(cases[name])[0])
        assert found["load"].startswith("model 'clf': model directory") and entry in found["load"], found
        assert "symbolic links are not followed out of its directory" in found["load"]
        assert entry in found["fingerprint"], found
        assert found["inspect"][0] == 2 and entry in found["inspect"][1], found
        assert found["batch_infer"][0] == 2 and entry in found["batch_infer"][1], found
        assert "Traceback" not in found["batch_infer"][1]
    assert not (tmp_path / "out").exists()


def test_a_model_refused_for_a_link_is_a_contract_error(hostile_models):
    with pytest.raises(ModelContractError, match="zero.bin is a symbolic link to /dev/zero"):
        load_serving_model(str(hostile_models["zero"]), "clf")  # checked before anything is read
