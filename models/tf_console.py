"""TensorFlow's start-up lines kept out of our commands' console output.

Loading TensorFlow prints lines that TF_CPP_MIN_LOG_LEVEL cannot silence, because they are written
before its logging is set up ("All log messages before absl::InitializeLog() ...", "Could not find
cuda drivers"), and on a machine without an NVIDIA driver an error-level "failed call to cuInit" once
devices are listed. Our commands import TensorFlow and list its devices once, up front, with file
descriptor 2 captured, then print back every captured line that is not such noise: real errors
still show. `--verbose` leaves TensorFlow's logging as it is, at its own default level.
"""

import logging
import os
import re
import sys
import tempfile
from typing import Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = "show TensorFlow's start-up lines and info logging (Beam's too)"

# Lines TensorFlow prints while it loads and finds its devices, on any machine.
_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^[IW]\d{4} ",  # absl-format info and warning lines (TF_CPP_MIN_LOG_LEVEL drops the later ones)
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    r"^E\d{4} .*Unable to register cu(DNN|FFT|BLAS) factory",
    r"^E\d{4} .*computation placer already registered",
))
# Only noise where the machine has no NVIDIA driver: there, no GPU is expected.
_CPU_MACHINE_NOISE = re.compile(r"^E\d{4} .*failed call to cuInit")


def has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def without_startup_noise(text: str, nvidia_driver: bool) -> str:
    """The lines of text that are not TensorFlow start-up noise, in order."""
    kept = []
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if any(p.search(bare) for p in _NOISE) or (not nvidia_driver and _CPU_MACHINE_NOISE.search(bare)):
            continue
        kept.append(line)
    return "".join(kept)


def load_tensorflow_quietly(argv: Sequence[str]) -> None:
    """For a command's __main__, before anything imports TensorFlow: import it and list its devices
    with stderr captured, then print the captured lines that are not start-up noise. With --verbose
    in argv, TensorFlow logs at its own default level instead and nothing is captured."""
    if VERBOSE_FLAG in argv:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where cuInit runs (and fails on a CPU machine)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(without_startup_noise(captured.read().decode("utf-8", "replace"),
                                                   has_nvidia_driver()))
            sys.stderr.flush()


# Loggers whose info lines are news on the console, verbose or not: a new model version swapped
# into a running stream (its refusals are warnings)
NEWS_LOGGERS = ("transforms.scoring.refresh",)


class _NewsHandler(logging.Handler):
    """Writes a news logger's line (info and up) to the sys.stderr of the moment, as logging's last
    resort handler writes warnings, unless a handler of the root logger takes it: then that one
    shows it, and nothing shows twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.levelno >= h.level for h in logging.getLogger().handlers)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pylint: disable=broad-except  # logging's own rule: report, never raise
            self.handleError(record)


def console_logging(argv: Sequence[str]) -> None:
    """Python logging for a command: warnings (TensorFlow's own logger: errors, which hides the TF1
    loader's deprecation notes tfx-bsl triggers), or with --verbose, info from everything; info
    from NEWS_LOGGERS either way."""
    verbose = VERBOSE_FLAG in argv
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.INFO if verbose else logging.ERROR)
    for name in NEWS_LOGGERS:
        news = logging.getLogger(name)
        news.setLevel(logging.INFO)
        if not any(isinstance(h, _NewsHandler) for h in news.handlers):
            news.addHandler(_NewsHandler())
