"""Models whose graphs use op libraries' ops run without a flag: a tensorflow-text model, a YDF
model and a BERT-style text classifier that takes raw strings (JSON Lines text in, tensorflow-text's
BertTokenizer and RoundRobinTrimmer in its graph), each built here (tests/support/op_library_models.py)
in a process of its own, are scored by `python -m pipelines.batch_infer` in a fresh process where no
op library is imported (the job imports them: at launch, and in each worker process of a two-worker
run), and the rows match a direct call of the SavedModel; tfx-bsl refuses the raw-string signature. Ops no installed package registers stop the command before launch
with the ops, the package and its pip line (or, for ops no known package provides, --op_library);
--op_library imports a module at launch and in every worker; a Dataflow dry run lists the op
libraries the workers will install; and the table of op libraries matches what the installed
packages register."""

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from models.serving import op_libraries
from models.serving.op_libraries import OP_LIBRARIES, libraries_for, worker_requirements
from pipelines import batch_infer
from pipelines.dataflow import add_worker_requirements
from tests.helpers import read_jsonl, write_tfrecord_file
from tests.support import op_library_models
from tests.support.op_library_models import MADE_UP_OP, build_in_subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_VERSION = importlib.metadata.version("tensorflow-text")
DATAFLOW = ["--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
            "--temp_location", "gs://my-bucket/tmp", "--dry_run"]
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--max_batch_size", "50"]


def run_python(args, env=None, timeout=600):
    """A fresh interpreter on the repository (nothing of this test process imported)."""
    return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))


def batch_job(input_path, model, output, *flags, patch=""):
    """`python -m pipelines.batch_infer` in a fresh process; patch: Python run first (the table
    of op libraries made to look otherwise)."""
    argv = ["--input", input_path, "--model", model, "--key_feature", "id", "--output", output] + list(flags)
    if not patch:
        return run_python(["-m", "pipelines.batch_infer"] + argv)
    code = f"import sys; {patch}; from pipelines import batch_infer; sys.exit(batch_infer.main(sys.argv[1:]))"
    return run_python(["-c", code] + argv)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{kind: (version dir, input file, direct outputs)} for the text and YDF models (TFRecord
    input) and the BERT-style model (JSON Lines of id and text), and the made-up-op model's
    version dir."""
    base = tmp_path_factory.mktemp("op_library_models")
    models = {}
    for kind in ("text", "ydf"):
        version_dir = str(base / kind / "1")
        direct = build_in_subprocess(kind, version_dir)
        records = op_library_models.EXAMPLES[kind]()
        models[kind] = (version_dir, write_tfrecord_file(str(base / f"{kind}.tfrecord"), records), direct)
    bert_dir = str(base / "bert" / "1")
    bert_direct = build_in_subprocess("bert", bert_dir)  # called on the raw texts
    bert_input = base / "bert.jsonl"
    bert_input.write_text("".join(json.dumps({"id": f"b{i}", "text": text}, ensure_ascii=False) + "\n"
                                  for i, text in enumerate(op_library_models.BERT_TEXTS)), encoding="utf-8")
    models["bert"] = (bert_dir, str(bert_input), bert_direct)
    made_up = str(base / "made_up_op" / "1")
    build_in_subprocess("made_up_op", made_up)
    models["made_up_op"] = (made_up, models["ydf"][1], None)
    return models


def test_the_models_need_their_op_library_in_a_fresh_process(built):
    """The premise: without the package imported, TensorFlow cannot load any of the models."""
    code = ("import sys, tensorflow as tf\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        tf.saved_model.load(path); print('loaded')\n"
            "    except Exception as e:\n        print('not registered' if 'not registered' in str(e) else repr(e))\n"
            "print(sorted(m for m in ('tensorflow_text', 'ydf_tf', 'ydf') if m in sys.modules))")
    done = run_python(["-c", code, built["text"][0], built["ydf"][0], built["bert"][0]])
    assert done.stdout.split("\n")[:4] == ["not registered"] * 3 + ["[]"], done.stdout + done.stderr


def rows_by_key(output):
    return {row["key"]: row for row in read_jsonl(output + "-*-of-*.jsonl")}


def check_rows(rows, model, direct, keys):
    assert sorted(rows) == sorted(keys)
    for i, key in enumerate(keys):
        outputs = rows[key][model]
        assert sorted(outputs) == sorted(direct)
        for name, values in direct.items():
            expected = values[i]
            if isinstance(expected, float) or isinstance(expected, list) and isinstance(expected[0], float):
                assert outputs[name] == pytest.approx(expected, rel=1e-5), (key, name)
            else:
                assert outputs[name] == expected, (key, name)


def test_a_tensorflow_text_model_runs_on_two_fresh_workers_that_import_it(built, tmp_path):
    """Each worker process starts without tensorflow_text; its model load imports it. The
    --op_library module is imported by the launcher and by each worker's scoring step."""
    version_dir, _, direct = built["text"]
    records = op_library_models.text_examples() * 50  # 300 records: 6 chunks to spread
    input_path = write_tfrecord_file(str(tmp_path / "many.tfrecord"), records)
    marker_dir, pids = tmp_path / "marker", tmp_path / "pids.txt"
    marker_dir.mkdir()
    (marker_dir / "oplib_marker.py").write_text(
        f"import os\nwith open({str(pids)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n")
    output = str(tmp_path / "out" / "text")
    argv = ["--input", input_path, "--model", f"text={version_dir}", "--key_feature", "id", "--output", output,
            "--op_library", "oplib_marker"] + TWO_WORKERS
    process = subprocess.Popen([sys.executable, "-m", "pipelines.batch_infer"] + argv, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=f"{REPO}:{marker_dir}", TF_CPP_MIN_LOG_LEVEL="2"))
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out + err
    rows = read_jsonl(output + "-*-of-*.jsonl")
    assert len(rows) == len(records)
    by_key = {row["key"]: row for row in rows}  # the 50 copies of each text share its key
    check_rows(by_key, "text", direct, [f"t{i}" for i in range(len(op_library_models.TEXTS))])
    imported_in = [int(line) for line in pids.read_text().split()]
    assert process.pid in imported_in  # the launcher, before the models load
    assert set(imported_in) - {process.pid}  # and the worker processes' scoring steps


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_a_ydf_model_runs_in_a_fresh_process_that_imports_ydf_tf(built, tmp_path, engine):
    version_dir, input_path, direct = built["ydf"]
    output = str(tmp_path / "ydf")
    done = batch_job(input_path, f"gbt={version_dir}", output, "--engine", engine)
    assert done.returncode == 0, done.stdout + done.stderr
    check_rows(rows_by_key(output), "gbt", direct, [f"r{i}" for i in range(len(direct["output"]))])
    assert not np.allclose(direct["output"], direct["output"][0])  # the trees split: outputs differ


def test_a_bert_style_classifier_of_raw_text_runs_in_a_fresh_process(built, tmp_path):
    """JSON Lines {"id", "text"} in; the signature's lone string input gets each raw text (no
    tf.Example parse in its graph). The texts: empty, blank, non-ASCII, all-unknown, and one
    that the trimmer cuts to BERT_SEQUENCE_LENGTH - 2 word pieces."""
    version_dir, input_path, direct = built["bert"]
    output = str(tmp_path / "bert")
    done = batch_job(input_path, f"bert={version_dir}", output)
    assert done.returncode == 0, done.stdout + done.stderr
    check_rows(rows_by_key(output), "bert", direct, [f"b{i}" for i in range(len(op_library_models.BERT_TEXTS))])
    assert max(direct["tokens"]) == op_library_models.BERT_SEQUENCE_LENGTH - 2 and min(direct["tokens"]) == 0
    assert len({tuple(p) for p in direct["probs"]}) > 2  # the texts' probabilities differ


def test_tfx_bsl_refuses_the_raw_text_signature_at_launch(built, tmp_path, capsys):
    version_dir, input_path, _ = built["bert"]
    assert batch_infer.main(["--input", input_path, "--model", f"bert={version_dir}", "--key_feature", "id",
                             "--output", str(tmp_path / "out" / "bert"), "--engine", "tfx-bsl"]) == 2
    err = capsys.readouterr().err
    assert "signature 'serving_default' takes tensors (text string[None])" in err, err
    assert "score it with --engine fast" in err
    assert not (tmp_path / "out").exists()


NOT_INSTALLED_TEXT = ("import dataclasses; from models.serving import op_libraries as o; "
                      "o.OP_LIBRARIES = tuple(dataclasses.replace(lib, module='tensorflow_text_not_here') "
                      "if lib.pip == 'tensorflow-text' else lib for lib in o.OP_LIBRARIES)")


def test_a_missing_package_stops_the_command_before_launch_with_its_pip_line(built, tmp_path):
    version_dir, input_path, _ = built["text"]
    output = str(tmp_path / "out" / "text")
    done = batch_job(input_path, f"text={version_dir}", output, patch=NOT_INSTALLED_TEXT)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    error = lines[[i for i, line in enumerate(lines) if line.startswith("batch_infer: error:")][0]:]
    assert error[0] == f"batch_infer: error: model 'text' at {version_dir} cannot run: its graph uses ops this " \
                       "TensorFlow does not register:"
    assert error[1].strip() == ("NormalizeUTF8, RegexSplitWithOffsets, TFText>WhitespaceTokenizeWithOffsetsV2: "
                                f"from tensorflow-text, which is not installed: pip install tensorflow-text=={TEXT_VERSION}")
    assert not (tmp_path / "out").exists()  # nothing launched, nothing written


def test_ops_no_known_package_provides_ask_for_op_library(built, tmp_path):
    version_dir, input_path, _ = built["made_up_op"]
    done = batch_job(input_path, f"m={version_dir}", str(tmp_path / "out" / "m"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{MADE_UP_OP}: no package this project knows provides them; pass --op_library MODULE" in done.stderr
    assert not (tmp_path / "out").exists()


UNKNOWN_YDF = ("from models.serving import op_libraries as o; "
               "o.OP_LIBRARIES = tuple(lib for lib in o.OP_LIBRARIES if 'SimpleMLInferenceOp' not in lib.names)")


def test_op_library_imports_the_module_that_registers_the_ops(built, tmp_path):
    """With the YDF packages unknown to the table, the model needs --op_library ydf_tf."""
    version_dir, input_path, direct = built["ydf"]
    refused = batch_job(input_path, f"gbt={version_dir}", str(tmp_path / "refused"), patch=UNKNOWN_YDF)
    assert refused.returncode == 2 and "SimpleMLCreateModelResource" in refused.stderr
    assert "pass --op_library MODULE" in refused.stderr
    output = str(tmp_path / "ydf")
    done = batch_job(input_path, f"gbt={version_dir}", output, "--op_library", "ydf_tf", patch=UNKNOWN_YDF)
    assert done.returncode == 0, done.stdout + done.stderr
    check_rows(rows_by_key(output), "gbt", direct, [f"r{i}" for i in range(len(direct["output"]))])


def test_an_op_library_that_cannot_be_imported_is_a_flag_error(built, tmp_path, capsys):
    version_dir, input_path, _ = built["ydf"]
    assert batch_infer.main(["--input", input_path, "--model", version_dir, "--output", str(tmp_path / "p"),
                             "--op_library", "no_such_module_for_op_library_tests"]) == 2
    assert ("--op_library no_such_module_for_op_library_tests: cannot import it: ModuleNotFoundError"
            in capsys.readouterr().err)


def test_the_dry_run_lists_the_op_libraries_workers_install(offline, built, tmp_path, capsys):
    text_dir, input_path, _ = built["text"]
    ydf_dir = built["ydf"][0]
    job_file = tmp_path / "job.json"
    assert batch_infer.main(DATAFLOW + ["--input", input_path, "--model", f"text={text_dir}", "--model",
                                        f"gbt={ydf_dir}", "--output", "gs://my-bucket/out/p",
                                        "--max_dead_letter_fraction", "1", "--job_file", str(job_file)]) == 0
    printed = capsys.readouterr().out
    expected = [f"tensorflow-text=={TEXT_VERSION}", f"ydf-tf=={importlib.metadata.version('ydf-tf')}"]
    assert f"requirements:      {'; '.join(expected)}" in printed.splitlines()
    with open(job_file) as f:
        job = json.load(f)
    pool = job["environment"]["workerPools"][0]
    assert "requirements.txt" in [p["name"] for p in pool["packages"]]  # staged for the workers' boot
    with open(job["environment"]["sdkPipelineOptions"]["options"]["requirements_file"]) as f:
        assert [line.strip() for line in f if not line.startswith("#")] == expected


def test_workers_get_the_models_libraries_and_the_op_library_modules_distributions(built):
    text_dir, ydf_dir = built["text"][0], built["ydf"][0]
    versions = {pip: importlib.metadata.version(pip) for pip in ("tensorflow-text", "ydf-tf", "PyYAML")}
    # ydf_tf's distribution once (ydf_tf == ydf-tf); this project's own and unknown modules: none
    assert worker_requirements([text_dir, ydf_dir], ["ydf_tf", "yaml", "pipelines", "no_such_module"]) == [
        f"tensorflow-text=={versions['tensorflow-text']}", f"ydf-tf=={versions['ydf-tf']}",
        f"PyYAML=={versions['PyYAML']}"]
    assert worker_requirements([built["made_up_op"][0]]) == []


def test_worker_requirements_keep_the_users_file_and_its_pins(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    mine = tmp_path / "requirements.txt"
    mine.write_text("pandas==2.3.3\nTensorflow_Text==2.21.0  # mine\n")
    options = PipelineOptions([f"--requirements_file={mine}"])
    assert add_worker_requirements(options, ["tensorflow-text==2.21.1", "ydf-tf==2.21.0.post1"]) == []
    with open(options.view_as(SetupOptions).requirements_file) as f:
        lines = f.read().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "pandas==2.3.3", "Tensorflow_Text==2.21.0  # mine", "ydf-tf==2.21.0.post1"]
    untouched = PipelineOptions([])
    assert add_worker_requirements(untouched, []) == [] and untouched.view_as(SetupOptions).requirements_file is None


# --- the table -----------------------------------------------------------------------------------

OPS_REGISTERED_BY = """
import importlib, json, sys
from tensorflow.python.client import pywrap_tf_session as s
from tensorflow.core.framework import op_def_pb2
def ops():
    listed = op_def_pb2.OpList()
    listed.ParseFromString(s.TF_GetBuffer(s.TF_GetAllOpList()))
    return {op.name for op in listed.op}
before = ops()
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(ops() - before)))
"""


@pytest.mark.parametrize("module", ["tensorflow_text", "ydf_tf"])
def test_the_table_names_every_op_the_installed_package_registers(module):
    """Read from TensorFlow's registry in a fresh process: the ops importing the package adds."""
    done = run_python(["-c", OPS_REGISTERED_BY, module])
    registered = json.loads(done.stdout.strip().splitlines()[-1])
    assert registered
    (library,) = [lib for lib in OP_LIBRARIES if lib.module == module]
    assert [op for op in registered if not library.provides(op)] == []
    assert sorted(library.names - set(registered)) == []  # no name the package does not register
    picked, unknown = libraries_for(registered)
    assert list(picked) == [library] and unknown == []  # the installed package is the one picked


def test_an_op_goes_to_the_first_installed_library_that_provides_it():
    by_pip = {lib.pip: lib for lib in OP_LIBRARIES}
    picked, unknown = libraries_for(["SimpleMLInferenceOpWithHandle", "SimpleMLModelTrainer", "TFText>Anything",
                                     "IO>AudioDecodeWAV", MADE_UP_OP])
    assert {lib.pip: ops for lib, ops in picked.items()} == {
        "ydf-tf": ["SimpleMLInferenceOpWithHandle"],  # installed; TF-DF (not installed) has the same op
        "tensorflow-decision-forests": ["SimpleMLModelTrainer"],  # TF-DF's own training op
        "tensorflow-text": ["TFText>Anything"], "tensorflow-io": ["IO>AudioDecodeWAV"]}
    assert unknown == [MADE_UP_OP]
    assert by_pip["tensorflow-decision-forests"].requirement() == "tensorflow-decision-forests"  # none fits TF 2.21
    assert op_libraries.import_for_model(str(REPO)) == ()  # no SavedModel: left to the loader to report
