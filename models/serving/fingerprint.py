"""A SavedModel's fingerprint: the SHA-256 of its files, so a result can be traced to a model.

The digest covers every file under the version directory (saved_model.pb, variables/, assets/,
assets.extra/), each as its relative path and its own SHA-256, in path order: renaming, adding or
changing any file changes it; copying the directory elsewhere does not. Run manifests and
`python -m models.inspect` print the same value.
"""

import hashlib
import os
from typing import Dict, List, Tuple

import tensorflow as tf

_BLOCK = 1 << 20


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(version_dir: str) -> List[Tuple[str, int]]:
    """(path, size in bytes) of every file under a model directory (local or gs://), in path order."""
    root = version_dir.rstrip("/")
    found = []
    for directory, _, files in tf.io.gfile.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            found.append((path, tf.io.gfile.stat(path).length))
    return sorted(found)


def saved_model_fingerprint(version_dir: str) -> Dict[str, object]:
    """{"sha256": digest of (relative path, file digest) lines, "files": n, "bytes": total}."""
    root = version_dir.rstrip("/")
    files = model_files(root)
    entries = [(os.path.relpath(path, root).replace(os.sep, "/"), file_sha256(path)) for path, _ in files]
    listing = "".join(f"{rel}\t{digest}\n" for rel, digest in sorted(entries))
    return {"sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(), "files": len(entries),
            "bytes": sum(size for _, size in files)}
