"""Before launch: can the job write where its outputs go? A local output prefix under a regular
file, in a directory that cannot be created or written (read-only, no permission), or on a full
disk is reported with the path, instead of a worker's traceback after the job has read its inputs.
Remote prefixes (gs://, ...) are the workers' to reach and are not probed here."""

import os
import shutil
import tempfile
from typing import Iterable, List, Optional

from transforms.sources.files import is_remote

MIN_FREE_BYTES = 1 << 20  # less than this free on the disk: call it full


def output_path_problem(prefix: str) -> Optional[str]:
    """Why no file can be written at this local prefix (PREFIX-00000-of-00001.jsonl, ...), or None.
    Creates the prefix's directory, as the job would, and a probe file in it (removed)."""
    path = prefix[len("file://"):] if prefix.startswith("file://") else prefix
    directory = os.path.dirname(os.path.abspath(path))
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"output {prefix}: {existing} is a file, not a directory, so nothing can be written under it"
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        return f"output {prefix}: cannot write in {directory} ({e.strerror or e})"
    usage = shutil.disk_usage(directory)
    if usage.total and usage.free < MIN_FREE_BYTES:
        return f"output {prefix}: the disk holding {directory} is full ({usage.free:,} bytes free)"
    return None


def output_path_problems(prefixes: Iterable[Optional[str]]) -> List[str]:
    """The problems of the local prefixes given, one per directory (None and remote ones are
    skipped: predictions, dead letters and manifest usually share a directory)."""
    found, directories = [], set()
    for prefix in (p for p in prefixes if p and not is_remote(p)):
        directory = os.path.dirname(os.path.abspath(prefix))
        if directory not in directories:
            directories.add(directory)
            problem = output_path_problem(prefix)
            if problem:
                found.append(problem)
    return found
