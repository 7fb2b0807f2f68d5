"""The run manifest: OUTPUT.manifest.json, which says exactly what produced a batch run's results.

Inputs (patterns and the files they matched, with sizes), each model (path, version, signature,
engine and the SHA-256 fingerprint `python -m models.inspect` prints), the pipeline options with
secrets redacted, start and end times, counts by stage, and the versions of the stack. Written
through Beam's FileSystems, so a gs:// output gets its manifest on GCS.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from models.serving.fingerprint import saved_model_fingerprint
from transforms.runtime import metrics
from transforms.runtime.accounting import (BATCH_LATENCY_US, BATCH_SIZE, DUPLICATE_KEYS, LOAD_LATENCY_MS,
                                          MODEL_BYTES, MODEL_DEAD_LETTERS_PREFIX, MODEL_OUTPUTS_PREFIX,
                                          UNREADABLE_BYTES, UNREADABLE_REGIONS, model_metric_name)
from transforms.runtime.redaction import REDACTED, redact_options, redact_values  # noqa: F401  (REDACTED re-exported)

MANIFEST_SUFFIX = ".manifest.json"
PACKAGES = ("apache-beam", "tensorflow", "tfx-bsl", "tf-beam-inference")


def manifest_path(output_prefix: str) -> str:
    return output_prefix + MANIFEST_SUFFIX


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def input_listing(patterns: Sequence[str]) -> List[Dict[str, Any]]:
    listing = []
    for pattern in patterns:
        matched = FileSystems.match([pattern])[0].metadata_list
        listing.append({"pattern": pattern, "files": [
            {"path": m.path, "size_bytes": m.size_in_bytes} for m in sorted(matched, key=lambda m: m.path)]})
    return listing


def model_entries(graph) -> List[Dict[str, Any]]:
    entries = []
    for node in graph.nodes:
        model = node.model
        entries.append({
            "name": model.name, "path": model.path, "version": model.version,
            "signature": model.signature, "method": model.method, "engine": node.engine,
            "inputs_from": [str(b) for b in node.bridges] or "records",
            "fingerprint": saved_model_fingerprint(model.path)})
    return entries


def stage_counts(counters: Mapping[str, int], model_names: Sequence[str]) -> Dict[str, Any]:
    """Counts by stage, in the terms of the summary: records in = predictions + dead letters."""
    dead = {name[len(metrics.DEAD_LETTER_PREFIX):]: value for name, value in sorted(counters.items())
            if name.startswith(metrics.DEAD_LETTER_PREFIX)}
    read = counters.get(metrics.RECORDS_READ, 0)
    counts = {
        "records_in": read + dead.get("read", 0),
        "records_read": read,
        "predictions": counters.get(metrics.PREDICTIONS_WRITTEN, 0),
        "dead_letters": sum(dead.values()),
        "dead_letters_by_stage": dead,
    }
    if counters.get(UNREADABLE_REGIONS):  # each is one read dead letter, however much it skipped
        counts["unreadable_regions"] = counters[UNREADABLE_REGIONS]
        counts["unreadable_bytes"] = counters.get(UNREADABLE_BYTES, 0)
    per_model = {name: {"outputs": counters.get(MODEL_OUTPUTS_PREFIX + name, 0),
                        "dead_letters": counters.get(MODEL_DEAD_LETTERS_PREFIX + name, 0)}
                 for name in model_names if MODEL_OUTPUTS_PREFIX + name in counters
                 or MODEL_DEAD_LETTERS_PREFIX + name in counters}
    if per_model:
        counts["per_model"] = per_model
    counts["duplicate_keys"] = counters.get(DUPLICATE_KEYS, 0)  # 0 by construction for position keys
    return counts


def versions() -> Dict[str, Optional[str]]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


class ManifestWriteError(OSError):
    """The run manifest could not be written (the message names the path and why)."""


def write_manifest(path: str, manifest: Mapping[str, Any]) -> None:
    """Writes the manifest whole or not at all: locally to a temporary file beside it, then renamed
    over it (a full disk leaves the previous manifest, never a truncated one); object stores
    (gs://) make an object visible only once it is complete. Secrets in any of its values are
    hidden (transforms.runtime.redaction). Raises ManifestWriteError."""
    data = json.dumps(redact_values(manifest), indent=2, sort_keys=False, default=str).encode("utf-8") + b"\n"
    try:
        if FileSystems.get_scheme(path) not in (None, "file"):
            with FileSystems.create(path, mime_type="application/json") as f:
                f.write(data)
            return
        local = path[len("file://"):] if path.startswith("file://") else path
        directory = os.path.dirname(os.path.abspath(local))
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".manifest-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, local)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except Exception as e:  # pylint: disable=broad-except  # disk full, read-only, a file in the path...
        raise ManifestWriteError(f"could not write the run manifest {path}: {type(e).__name__}: {e}") from e


def read_manifest(path: str) -> Dict[str, Any]:
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def inference_metrics(distributions: Mapping[str, Mapping[str, float]], model: str) -> Dict[str, Any]:
    """One model's inference metrics from a run's distributions (transforms.runtime.accounting):
    batches scored, batch size and latency, load time, size on disk; {} where it made no call."""
    def get(metric):
        return distributions.get(model_metric_name(metric, model))
    sizes, latency, load, size = get(BATCH_SIZE), get(BATCH_LATENCY_US), get(LOAD_LATENCY_MS), get(MODEL_BYTES)
    found: Dict[str, Any] = {}
    if sizes:
        found.update(batches=int(sizes["count"]), batch_size_mean=round(sizes["mean"], 1),
                     batch_size_max=int(sizes["max"]))
    if latency:
        found["batch_latency_ms"] = {"mean": round(latency["mean"] / 1e3, 3), "min": round(latency["min"] / 1e3, 3),
                                     "max": round(latency["max"] / 1e3, 3)}
    if load:
        found.update(loads=int(load["count"]), load_seconds_max=round(load["max"] / 1e3, 3))
    if size:
        found["bytes_on_disk"] = int(size["max"])
    return found


def output_entry(job, written: Mapping[str, Any]) -> Dict[str, Any]:
    """Where a batch run's results went: patterns that match exactly its files (or tables), the
    prefixes, and the files themselves (what --overwrite of a later run removes)."""
    errors_prefix = None if job.bigquery.errors_table else job.errors
    return {"predictions": written.get("predictions") or job.predictions_at,
            "dead_letters": job.bigquery.errors_table or written.get("dead_letters") or f"{job.errors}-*.jsonl",
            "format": job.sink.name, "prefix": job.output, "errors_prefix": errors_prefix,
            "files": dict(written.get("files") or {})}


def batch_manifest(job, options: Mapping[str, Any], inputs: List[Dict[str, Any]],
                   models: List[Dict[str, Any]], started_at: str, counters: Mapping[str, int],
                   run: Optional[Mapping[str, Any]] = None, error: Optional[BaseException] = None,
                   distributions: Optional[Mapping[str, Mapping[str, float]]] = None,
                   written: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The manifest of a pipelines.batch_infer run (job: its BatchJob; run: the runner it ran on,
    whether chunks were redistributed, how many worker processes scored; distributions: the
    run's, for each model's inference metrics; written: the files it wrote,
    pipelines.output_paths.written_outputs)."""
    if distributions:
        models = [dict(m, inference=inference_metrics(distributions, m["name"])) for m in models]
    manifest = {
        "manifest_version": 1,
        "job": "pipelines.batch_infer",
        "status": "failed" if error is not None else "succeeded",
        "started_at": started_at,
        "ended_at": utc_now(),
        "inputs": {"format": job.input_format, ("patterns" if job.inputs else "bigquery"): inputs,
                   "key_feature": job.key_feature, "with_source": job.with_source},
        "models": models,
        "outputs": output_entry(job, written or {}),
        "run": dict(run or {}),
        "counts": stage_counts(counters, job.graph.names),
        "options": redact_options(options),
        "versions": versions(),
    }
    if error is not None:
        manifest["error"] = f"{type(error).__name__}: {error}"[:2000]
    return manifest
