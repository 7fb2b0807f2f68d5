"""Misspelt flags are errors naming the closest known flag, in every command; every real Beam
option still passes through."""

import pytest

from models import inspect as inspect_cli
from models import prepare as prepare_cli
from pipelines import batch_infer, stream_infer, to_tfrecord
from pipelines.flags import unknown_flag_problems


@pytest.mark.parametrize("main, argv, expected", [
    (batch_infer.main, ["--modle", "x"], "unknown flag --modle; did you mean --model?"),
    (batch_infer.main, ["--input", "x.tfrecord", "--model", "m", "--output", "o", "--outptu_format", "tfrecord",
                        "--max_batch_sise", "10"],
     "unknown flag --outptu_format; did you mean --output_format?; unknown flag --max_batch_sise; "
     "did you mean --max_batch_size?"),
    (stream_infer.main, ["--input_subscriptoin", "projects/p/subscriptions/s"],
     "unknown flag --input_subscriptoin; did you mean --input_subscription?"),
    (to_tfrecord.main, ["--inptu", "x.jsonl", "--output", "o"], "unknown flag --inptu; did you mean --input?"),
])
def test_pipeline_commands_refuse_misspelt_flags_before_anything_else(main, argv, expected, capsys, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may run: no demo, no output
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("main, argv, expected", [
    (prepare_cli.main, ["--modle", "m.keras", "--output", "out"], "unknown flag --modle; did you mean --model?"),
    (inspect_cli.main, ["model_dir", "--signatrue", "x"], "unknown flag --signatrue; did you mean --signature?"),
])
def test_model_commands_refuse_misspelt_flags(main, argv, expected, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and expected in capsys.readouterr().err


def test_real_beam_options_pass_through():
    assert unknown_flag_problems([
        "--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp_location", "gs://b/t",
        "--num_workers", "3", "--max_num_workers=9", "--experiments", "use_runner_v2", "--labels", "a=b",
        "--sdk_container_image", "img", "--direct_running_mode=multi_processing", "--direct_num_workers", "2",
        "--save_main_session", "--setup_file", "./setup.py", "--dataflow_service_options", "x",
        "--environment_type", "LOOPBACK", "--job_name", "j", "--dry_run=True", "--gpu", "nvidia-l4",
        "--pubsub_emulator", "h:1", "--input_subscription", "s", "--model", "m"]) == []
