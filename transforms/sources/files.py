"""The files a job reads: patterns expanded before the job starts, stable key names, and the
read stage every file source shares (files spread over workers, one DoFn reading each)."""

import os
from typing import Dict, List, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.records.dead_letters import DEAD_LETTER_TAG, WithDeadLetters


class NoInputFilesError(ValueError):
    pass


def expand_patterns(patterns: Sequence[str]) -> List[str]:
    """Every file the patterns match, sorted and de-duplicated; raises when a pattern matches none."""
    paths = set()
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for an unreachable or malformed pattern
            raise NoInputFilesError(f"cannot list input {pattern!r}: {e}") from e
        files = [m.path for m in matched if m.size_in_bytes is None or not m.path.endswith("/")]
        if not files:
            raise NoInputFilesError(f"input pattern {pattern!r} matches no files")
        paths.update(files)
    return sorted(paths)


def key_names(paths: Sequence[str]) -> Dict[str, str]:
    """Short, unique, deterministic names for key prefixes."""
    bases = [os.path.basename(p) for p in paths]
    if len(set(bases)) == len(bases):
        return dict(zip(paths, bases))
    return {p: p for p in paths}


def read_files(pbegin, paths: Sequence[str], label: str, read_fn: beam.DoFn):
    """(path, key name) per file, spread over workers, read by read_fn: (records, dead letters)."""
    names = key_names(paths)
    result = (
        pbegin
        | "Files" >> beam.Create([(p, names[p]) for p in paths])
        | "SpreadFiles" >> beam.Reshuffle()
        | label >> beam.ParDo(read_fn).with_outputs(DEAD_LETTER_TAG, main="records"))
    return WithDeadLetters(result.records, result[DEAD_LETTER_TAG])
