"""TF Serving's `base/<version>/` layout: finding, choosing and naming version directories."""

import os
import re
import stat
from typing import List, Optional

import tensorflow as tf

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
MAX_NAMED_PROBLEMS = 5


class ModelNotFoundError(FileNotFoundError):
    pass


class UnsafeModelError(ModelNotFoundError):
    """A local model directory with a symbolic link out of it (or to nowhere), or an entry that is
    neither a file nor a directory (a FIFO, a device such as /dev/zero): never read."""


def local_path(path: str) -> Optional[str]:
    """The local file system path of path (file:// stripped); None for gs:// and other schemes."""
    if path[:len("file://")].lower() == "file://":
        return path[len("file://"):]
    return None if _SCHEME.match(path) else path


def entry_problem(path: str, real_root: str) -> Optional[str]:
    """Why a job must not read this entry of the model directory whose real path is real_root,
    or None: a symbolic link that leads out of it or nowhere, or not a regular file or directory."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:  # gone while the directory was walked
        return f"{path} cannot be read ({e.strerror})"
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
            return f"{path} is a symbolic link to {target}, outside the model directory"
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            return f"{path} is a symbolic link to {target}, which cannot be read ({e.strerror})"
    kind = next((name for is_kind, name in _SPECIAL_KINDS if is_kind(mode)), None)
    return f"{path} is {kind}, not a regular file" if kind else None


def unsafe_entries(model_dir: str) -> List[str]:
    """What a job must not read under a local model directory, one line each (entry_problem), in
    path order; symbolic links to directories are not walked into. [] for remote directories
    (gs://), which hold no links."""
    local = local_path(model_dir)
    if local is None:
        return []
    real_root = os.path.realpath(local)
    problems = []
    for directory, dirs, files in os.walk(local, onerror=lambda e: problems.append(
            f"{e.filename} cannot be listed ({e.strerror})")):
        for name in sorted(dirs + files):
            problem = entry_problem(os.path.join(directory, name), real_root)
            if problem:
                problems.append(problem)
    return problems


def refuse_unsafe(model_dir: str) -> None:
    """Raises UnsafeModelError naming the entries unsafe_entries finds."""
    problems = unsafe_entries(model_dir)
    if problems:
        more = len(problems) - MAX_NAMED_PROBLEMS
        raise UnsafeModelError(
            f"model directory {model_dir} is refused: " + "; ".join(problems[:MAX_NAMED_PROBLEMS])
            + (f"; and {more} more" if more > 0 else "") + ". A job reads only the model's own files: "
            "symbolic links are not followed out of its directory and special files are never read; "
            "copy the files in instead")


def is_saved_model_dir(path: str) -> bool:
    return any(tf.io.gfile.exists(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def version_names(base: str) -> List[str]:
    """All-digit subdirectories of base that hold a SavedModel, by number ascending, named as they
    are on disk (TF Serving's own layout pads them: base/00000123/)."""
    if not tf.io.gfile.isdir(base):
        return []
    names = [entry.rstrip("/") for entry in tf.io.gfile.listdir(base)]
    return sorted((n for n in names if n.isdigit() and is_saved_model_dir(os.path.join(base, n))),
                  key=lambda n: (int(n), n))


def list_versions(base: str) -> List[int]:
    """The version numbers under base, ascending."""
    return [int(name) for name in version_names(base)]


KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def resolve_version_dir(path: str) -> str:
    """A version directory as it is, or a base directory's numerically highest version (as TF
    Serving picks it), its name kept as it is on disk. Raises UnsafeModelError for one with links
    out or special files in it (refuse_unsafe) before anything in it is read."""
    if path.lower().endswith(KERAS_SUFFIXES):
        raise ModelNotFoundError(
            f"{path} is a Keras file, not a SavedModel: export it first with "
            f"python -m models.prepare --model {path} --output DIR, then pass DIR")
    if not tf.io.gfile.exists(path):
        raise ModelNotFoundError(f"model directory {path} does not exist")
    if is_saved_model_dir(path):
        refuse_unsafe(path.rstrip("/"))
        return path.rstrip("/")
    versions = version_names(path)
    if not versions:
        raise ModelNotFoundError(
            f"{path} holds no SavedModel: expected saved_model.pb in it or in a numbered "
            "version subdirectory (base/<version>/saved_model.pb)")
    refuse_unsafe(os.path.join(path.rstrip("/"), versions[-1]))
    return os.path.join(path.rstrip("/"), versions[-1])


def next_version(base: str) -> int:
    """The next free integer version under base (1 for a new base); any entry blocks its number."""
    taken = [0]
    if tf.io.gfile.isdir(base):
        taken += [int(e.rstrip("/")) for e in tf.io.gfile.listdir(base) if e.rstrip("/").isdigit()]
    return max(taken) + 1


def version_of(version_dir: str) -> Optional[int]:
    name = os.path.basename(version_dir.rstrip("/"))
    return int(name) if name.isdigit() else None
