"""GPU utilisation while a measurement runs: nvidia-smi's utilization.gpu every 0.5 s.

    with GpuUtilization() as util:
        ... the work ...
    util.summary(start, end)  # {"mean": .., "max": .., "samples": n} over [start, end], or None

One `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500` process runs
beside the work (its own loop: nothing is spawned per sample); a thread timestamps each line it
prints (time.perf_counter, the clock the workers time with), so the summary can keep only the
samples of the timed section. Where nvidia-smi is missing or fails, there are no samples and the
summary is None: the measurement itself goes on.
"""

import statistics
import subprocess
import threading
import time
from typing import Iterable, List, Optional, Sequence, Tuple

INTERVAL_MS = 500
COMMAND = ("nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"-lms={INTERVAL_MS}")


def parse_percent(line: str) -> Optional[float]:
    """One nvidia-smi line ("87", " 87 %") as a percentage; None for what is not one ("[N/A]")."""
    text = line.strip().rstrip("%").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 100.0 else None


def summarize(samples: Iterable[Tuple[float, float]], start: float = float("-inf"),
              end: float = float("inf")) -> Optional[dict]:
    """Mean and max of the (time, percent) samples taken in [start, end]; None when there are none."""
    values = [percent for at, percent in samples if start <= at <= end]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "max": max(values), "samples": len(values)}


class GpuUtilization:
    """Samples GPU utilisation while in its `with` block (see the module's docstring)."""

    def __init__(self, command: Sequence[str] = COMMAND):
        self.command = list(command)
        self.samples: List[Tuple[float, float]] = []
        self.problem: Optional[str] = None
        self._process = None
        self._reader = None

    def __enter__(self):
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True)
        except OSError as e:  # no nvidia-smi here: nothing to sample
            self.problem = f"{self.command[0]} cannot run ({e.strerror or e})"
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self):
        for line in self._process.stdout:
            percent = parse_percent(line)
            if percent is not None:
                self.samples.append((time.perf_counter(), percent))

    def __exit__(self, *exc):
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._reader.join(timeout=5)
            if not self.samples:
                self.problem = f"{self.command[0]} gave no utilisation (exit {self._process.returncode})"
        return False

    def summary(self, start: float = float("-inf"), end: float = float("inf")) -> Optional[dict]:
        return summarize(list(self.samples), start, end)
