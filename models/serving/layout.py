"""TF Serving's `base/<version>/` layout: finding, choosing and naming version directories."""

import os
from typing import List, Optional

import tensorflow as tf

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ModelNotFoundError(FileNotFoundError):
    pass


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
    Serving picks it), its name kept as it is on disk."""
    if path.lower().endswith(KERAS_SUFFIXES):
        raise ModelNotFoundError(
            f"{path} is a Keras file, not a SavedModel: export it first with "
            f"python -m models.prepare --model {path} --output DIR, then pass DIR")
    if not tf.io.gfile.exists(path):
        raise ModelNotFoundError(f"model directory {path} does not exist")
    if is_saved_model_dir(path):
        return path.rstrip("/")
    versions = version_names(path)
    if not versions:
        raise ModelNotFoundError(
            f"{path} holds no SavedModel: expected saved_model.pb in it or in a numbered "
            "version subdirectory (base/<version>/saved_model.pb)")
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
