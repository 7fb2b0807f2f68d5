"""Before launch: can the job write where its outputs go? A local output prefix under a regular
file, in a directory that cannot be created or written (read-only, no permission), or on a full
disk is reported with the path, instead of a worker's traceback after the job has read its inputs.
Remote prefixes (gs://, ...) are the workers' to reach and are not probed here.

And a run's outputs are its own: a prefix holding another run's shards or manifest is refused at
launch (--overwrite removes them first), the leftover temporary directories of killed or failed
runs are removed, and the manifest names exactly the files this run wrote."""

import glob
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Pattern, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

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


# A run's files, and nobody else's. Beam names shards PREFIX-SSSSS-of-NNNNN<suffix> (at least five
# digits each) and writes them through a temporary directory beam-temp-<last part of PREFIX>-<uuid1
# hex> beside them, which a killed run leaves behind.
_SHARD_NUMBERS = r"-(\d{5,})-of-(\d{5,})"
_TEMP_DIR_ID = r"-[0-9a-f]{32}(?=/|$)"
SHOWN_FILES = 5  # a refusal names this many of the files it found


def shard_regex(prefix: str, suffix: Optional[str] = None) -> Pattern:
    """The paths of a prefix's shards: PREFIX-SSSSS-of-NNNNN then suffix (None: any suffix), so
    out/p matches out/p-00000-of-00002.jsonl but not out/p-2-00000-of-00001.jsonl."""
    tail = re.escape(suffix) if suffix is not None else r"[^/]*"
    return re.compile(re.escape(prefix) + _SHARD_NUMBERS + tail + "$")


def _matching(prefix: str, wildcards: str) -> List[str]:
    """The paths that start with prefix and match the glob wildcards after it: local ones by one
    directory listing (files and directories; Beam's match walks every file below), remote ones
    through Beam's file systems (their * may span a /: callers match full paths themselves)."""
    if is_remote(prefix):
        return [m.path for m in FileSystems.match([prefix + wildcards])[0].metadata_list]
    return glob.glob(glob.escape(prefix) + wildcards)


def shard_files(prefix: str, suffix: Optional[str] = None) -> List[str]:
    """The shard files at a prefix (of any suffix when suffix is None), sorted; never a directory
    (one named like a shard is nobody's output, and --overwrite must not remove what it holds)."""
    regex = shard_regex(prefix, suffix)
    return sorted(p for p in _matching(prefix, "-*-of-*")
                  if regex.match(p) and (is_remote(p) or os.path.isfile(p)))


def temp_dirs(prefix: str) -> List[str]:
    """Beam's temporary directories of a prefix (beam-temp-<name>-<uuid1 hex>), sorted."""
    directory, name = FileSystems.split(prefix)
    start = FileSystems.join(directory, "beam-temp-" + name)
    regex = re.compile(re.escape(start) + _TEMP_DIR_ID)
    return sorted({m.group(0) for m in map(regex.match, _matching(start, "-*")) if m})


def remove_temp_dirs(prefixes: Iterable[Optional[str]]) -> List[str]:
    """Removes the leftover temporary directories of these prefixes (a killed or failed run's);
    returns them."""
    found = [d for prefix in prefixes if prefix for d in temp_dirs(prefix)]
    if found:
        FileSystems.delete([d if not is_remote(d) else d + "/" for d in found])
    return found


def existing_outputs(output: Optional[str], errors: Optional[str], manifest: Optional[str]) -> List[str]:
    """What an earlier run left at a job's prefixes: shards of the output and dead-letter prefixes
    (any suffix: another --output_format too) and, for a job with --output, its manifest."""
    found = [path for prefix in (output, errors) if prefix for path in shard_files(prefix)]
    if output and manifest and FileSystems.exists(manifest):
        found.append(manifest)
    return sorted(set(found))


def earlier_outputs_problem(prefix: Optional[str], found: Sequence[str]) -> Optional[str]:
    """Why a job is refused at a prefix holding another run's outputs (found), or None."""
    if not found:
        return None
    return (f"{prefix} holds another run's outputs ({_shown(found)}); give --overwrite to replace them "
            "(the files its manifest lists and every shard of the prefix are removed first), or another --output")


def files_listed_in(manifest: Optional[str]) -> List[str]:
    """The files an earlier run's manifest lists, only those that are shards of the prefixes it
    records (a manifest edited to list other files does not get them removed)."""
    if not manifest or not FileSystems.exists(manifest):
        return []
    try:
        with FileSystems.open(manifest) as f:
            outputs = json.loads(f.read().decode("utf-8")).get("outputs") or {}
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object: lists nothing
        return []
    regexes = [shard_regex(p) for p in (outputs.get("prefix"), outputs.get("errors_prefix")) if isinstance(p, str)]
    listed = outputs.get("files") if isinstance(outputs.get("files"), dict) else {}
    return sorted({path for group in listed.values() if isinstance(group, list) for path in group
                   if isinstance(path, str) and any(r.match(path) for r in regexes)})


def remove_earlier_outputs(output: Optional[str], errors: Optional[str], manifest: Optional[str]) -> List[str]:
    """--overwrite: removes the earlier run's files as its manifest lists them, every shard of the
    job's prefixes and the manifest itself, before anything is written; returns what it removed."""
    doomed = set(existing_outputs(output, errors, manifest)) | set(files_listed_in(manifest if output else None))
    doomed = sorted(p for p in doomed if FileSystems.exists(p))
    if doomed:
        FileSystems.delete(doomed)
    return doomed


def exact_glob(prefix: str, suffix: str, files: Sequence[str]) -> str:
    """A pattern that matches exactly one run's shard files: PREFIX-?????-of-NNNNN<suffix> with
    their shard count (a stale shard of another count does not match it); PREFIX-?????-of-?????
    when there are none."""
    regex = shard_regex(prefix, suffix)
    totals = {m.group(2) for m in map(regex.match, files) if m}
    if len(totals) != 1:
        return f"{prefix}-?????-of-?????{suffix}"
    (total,) = totals
    return f"{prefix}-{'?' * 5 if len(total) == 5 else '*'}-of-{total}{suffix}"


def written_outputs(output: Optional[str], suffix: str, errors: Optional[str]) -> Dict[str, Any]:
    """What a run wrote at its prefixes, for its manifest: exact patterns of its prediction and
    dead-letter files and the files themselves (None where it writes no files there)."""
    found: Dict[str, Any] = {"files": {}}
    for name, prefix, tail in (("predictions", output, suffix), ("dead_letters", errors, ".jsonl")):
        if prefix:
            files = shard_files(prefix, tail)
            found[name] = exact_glob(prefix, tail, files)
            found["files"][name] = files
    return found


def files_beam_would_delete(prefix: str, suffix: str) -> List[str]:
    """Files that are not this prefix's shards but that Beam's file writer deletes before it moves
    its shards into place: it removes every match of PREFIX-*-of-NNNNN<suffix> (NNNNN: its shard
    count), and that * spans '-' and '/', so out/pred's run deletes out/pred-2-00000-of-00001.jsonl
    and out/pred-x/y-00000-of-00001.jsonl. Listed as Beam lists them."""
    own = shard_regex(prefix, suffix)
    matched = FileSystems.match([prefix + "-*-of-*" + suffix])[0].metadata_list
    return sorted(m.path for m in matched if not own.match(m.path))


def overlapping_prefix_problems(prefixes: Sequence[Tuple[Optional[str], str]]) -> List[str]:
    """Why these (prefix, suffix) outputs would delete other files, or this run's own: files of
    other outputs that Beam's writer would delete (files_beam_would_delete), and one prefix that
    starts with another's PREFIX- (its files match the other's deletion pattern)."""
    problems = []
    for prefix, suffix in prefixes:
        if not prefix:
            continue
        for other, other_suffix in prefixes:
            if other and other != prefix and other.startswith(prefix + "-") and other_suffix.endswith(suffix):
                problems.append(f"{other} starts with {prefix}-: Beam's writer of {prefix} would delete its "
                                "files; give prefixes that do not start with one another")
        doomed = files_beam_would_delete(prefix, suffix)
        if doomed:
            problems.append(
                f"{prefix}: Beam's file writer deletes every file matching {prefix}-*-of-NNNNN{suffix} "
                f"before it moves its shards into place, which would delete {_shown(doomed)} of other "
                "outputs; give a prefix that no other file name starts with (a directory of its own)")
    return problems


def _shown(paths: Sequence[str]) -> str:
    """'3 files: a, b, c' (the first SHOWN_FILES of them named)."""
    more = f" and {len(paths) - SHOWN_FILES:,} more" if len(paths) > SHOWN_FILES else ""
    return f"{len(paths):,} file{'s' if len(paths) != 1 else ''}: {', '.join(paths[:SHOWN_FILES])}{more}"
