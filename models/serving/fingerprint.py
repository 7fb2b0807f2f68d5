"""A SavedModel's fingerprint: the SHA-256 of its files, so a result can be traced to a model.

The digest covers every file under the version directory (saved_model.pb, variables/, assets/,
assets.extra/), each as its relative path and its own SHA-256, in path order: renaming, adding or
changing any file changes it; copying the directory elsewhere does not. Run manifests and
`python -m models.inspect` print the same value.

Only the model's own files are read: in a local directory, symbolic links that lead out of it
and special files (FIFOs, devices such as /dev/zero) are left out of model_files and make
saved_model_fingerprint raise (models.serving.layout.UnsafeModelError), never read.
"""

import hashlib
import os
from typing import Dict, List, Tuple

import tensorflow as tf

from models.serving import layout

_BLOCK = 1 << 20


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(version_dir: str) -> List[Tuple[str, int]]:
    """(path, size in bytes) of every file under a model directory (local or gs://), in path order.
    Locally, only regular files inside it (a symbolic link to one inside counts; links to
    directories are not walked into): what layout.entry_problem refuses is left out, unread."""
    root = version_dir.rstrip("/")
    local = layout.local_path(root)
    if local is None:
        return sorted((os.path.join(directory, name), tf.io.gfile.stat(os.path.join(directory, name)).length)
                      for directory, _, files in tf.io.gfile.walk(root) for name in files)
    real_root, found = os.path.realpath(local), []
    for directory, _, files in os.walk(local):
        for name in files:
            path = os.path.join(directory, name)
            if layout.entry_problem(path, real_root) is None and os.path.isfile(path):
                found.append((path, os.path.getsize(path)))
    return sorted(found)


def saved_model_fingerprint(version_dir: str) -> Dict[str, object]:
    """{"sha256": digest of (relative path, file digest) lines, "files": n, "bytes": total}.
    Raises layout.UnsafeModelError for a directory with links out or special files in it."""
    root = version_dir.rstrip("/")
    layout.refuse_unsafe(root)
    files, base = model_files(root), layout.local_path(root) or root
    entries = [(os.path.relpath(path, base).replace(os.sep, "/"), file_sha256(path)) for path, _ in files]
    listing = "".join(f"{rel}\t{digest}\n" for rel, digest in sorted(entries))
    return {"sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(), "files": len(entries),
            "bytes": sum(size for _, size in files)}
