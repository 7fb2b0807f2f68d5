"""Our commands' console: TensorFlow's start-up lines stay out of it (real errors still show), and
--verbose brings them back."""

import os
import subprocess
import sys

from models.serving.examples import make_example
from models.tf_console import without_startup_noise
from tests.test_batch_infer import penguin_values

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CAPTURED = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796230315.601664   23180 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796230461.057623   28694 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796230321.802025   23180 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796230321.802025   23180 some_op.cc:10] a real error
Traceback (most recent call last):
"""


def test_start_up_noise_is_dropped_and_real_errors_kept():
    assert without_startup_noise(CAPTURED, nvidia_driver=False) == (
        "E0000 00:00:1796230321.802025   23180 some_op.cc:10] a real error\nTraceback (most recent call last):\n")
    # where a driver is installed, a failed cuInit is a real problem
    assert "failed call to cuInit" in without_startup_noise(CAPTURED, nvidia_driver=True)


def run_command(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, errors="replace",
                          timeout=300)


NOISE_MARKS = ("absl::InitializeLog", "cudart_stub", "cpu_feature_guard", "cuInit", "OP_REQUIRES",
               "is deprecated")


def test_a_job_with_garbage_records_prints_no_tensorflow_lines_unless_verbose(penguin_model, write_tfrecords,
                                                                              tmp_path):
    records = [make_example(v).SerializeToString() for v in penguin_values(30)]
    records[3:6] = [b"\x00garbage\xff" * 5, b"not an example at all", b"\x0a\x05"]
    path = write_tfrecords("in.tfrecord", records)
    args = ["pipelines.batch_infer", "--input", path, "--model", penguin_model[0], "--output",
            str(tmp_path / "pred"), "--key_feature", "id"]
    quiet = run_command(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert "records in 30; predictions out 27; dead letters 3" in quiet.stdout
    noisy = [line for line in quiet.stderr.splitlines() if any(m in line for m in NOISE_MARKS)]
    assert not noisy, quiet.stderr
    assert "garbage" not in quiet.stderr
    verbose = run_command(*args, "--verbose", "--overwrite")  # a rerun into the same prefix replaces the first
    assert verbose.returncode == 0, verbose.stderr
    # this machine's TensorFlow prints start-up lines (there is no GPU here): --verbose shows them
    assert any(m in verbose.stderr for m in NOISE_MARKS), verbose.stderr


def test_models_inspect_prints_its_report_and_nothing_else(penguin_model):
    result = run_command("models.inspect", penguin_model[0])
    assert result.returncode == 0
    assert result.stdout.startswith("SavedModel: ")
    assert result.stderr == ""


def test_a_model_swap_shows_on_a_quiet_console_once_and_other_info_lines_do_not():
    """A stream's console (console_logging without --verbose) shows the refresh logger's info
    line, a model version swapped in, and its warnings, each once; other loggers' info stays off."""
    script = ("import logging; from models.tf_console import console_logging; console_logging([]); "
              "from transforms.scoring.refresh import LOG; LOG.info('swapped in'); LOG.warning('refused'); "
              "logging.getLogger('apache_beam').info('beam chatter'); console_logging([]); LOG.info('again')")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line in ("swapped in", "refused", "again")] == ["swapped in", "refused", "again"]
    assert "beam chatter" not in result.stderr
