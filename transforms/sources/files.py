"""The files a job reads: patterns matched on the workers at run time, stable key names, and the
read stage every file source shares (files spread over workers, optionally split into parts, one
DoFn reading each file or part).

The job graph holds the patterns, not the files they match: a million input files make the same
small graph, and a Dataflow job is built (or dry-run) without listing gs:// from the launcher.
Where the launcher can list a pattern, it still does, so an empty glob fails before launch.
"""

import os
import re
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from transforms.records.chunk import (DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE, ChunkBuilder, FilePositions, RecordChunk,
                                     split_by_bytes)
from transforms.records.dead_letters import DEAD_LETTER_TAG, READ, WithDeadLetters
from transforms.runtime.accounting import AccountedDoFn

_REMOTE = re.compile(r"^(?!file://)[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class NoInputFilesError(ValueError):
    pass


def is_remote(pattern: str) -> bool:
    """gs://, s3://, ... (anything with a scheme but file://)."""
    return bool(_REMOTE.match(pattern))


def expand_patterns(patterns: Sequence[str]) -> List[str]:
    """Every file the patterns match, sorted and de-duplicated; raises when a pattern matches none."""
    paths = set()
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for an unreachable or malformed pattern
            raise NoInputFilesError(f"cannot list input {pattern!r}: {e}") from e
        files = file_paths(matched)
        if not files:
            raise NoInputFilesError(f"input pattern {pattern!r} matches no files")
        paths.update(files)
    return sorted(paths)


def file_paths(metadata: Iterable) -> List[str]:
    """The paths of matched files, without the directory placeholders object stores list."""
    return [m.path for m in metadata if m.size_in_bytes is None or not m.path.endswith("/")]


def key_names(paths: Sequence[str]) -> Dict[str, str]:
    """Short, unique, deterministic names for key prefixes."""
    bases = [os.path.basename(p) for p in paths]
    if len(set(bases)) == len(bases):
        return dict(zip(paths, bases))
    return {p: p for p in paths}


def named_files(paths: Iterable[str]) -> List[tuple]:
    """(path, key name) of every matched file, sorted and de-duplicated: the same names whichever
    worker matched which pattern."""
    unique = sorted(set(paths))
    names = key_names(unique)
    return [(p, names[p]) for p in unique]


class MatchInputFiles(beam.PTransform):
    """patterns -> (path, key name) per matched file, matched on the workers (Beam's fileio.MatchAll;
    a pattern that matches nothing fails the job), spread over workers."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
                | "AllFiles" >> beam.combiners.ToList()
                | "KeyNames" >> beam.FlatMap(lambda matched: named_files(file_paths(matched)))
                | "SpreadFiles" >> beam.Reshuffle())


def check_local_patterns(patterns: Sequence[str]) -> None:
    """Raises NoInputFilesError for a pattern on this machine's disk that matches nothing (the
    launcher lists remote ones itself where it can: pipelines.inputs)."""
    expand_patterns([p for p in patterns if not is_remote(p)])


def read_files(pbegin, patterns: Sequence[str], label: str, read_fn: beam.DoFn,
               split: Optional[beam.PTransform] = None):
    """The files the patterns match, read by read_fn (element -> records, dead letters). Each
    element is a file's (path, key name), or with split (a transform of those), what split makes
    of them: (path, key name, ...) per part of a file, read on its own."""
    files = pbegin | "MatchFiles" >> MatchInputFiles(patterns)
    elements = files if split is None else files | "SplitFiles" >> split
    result = elements | label >> beam.ParDo(read_fn).with_outputs(DEAD_LETTER_TAG, main="records")
    return WithDeadLetters(result.records, result[DEAD_LETTER_TAG])


class KeyedBlock(NamedTuple):
    """Records a source read clean as one block (a Parquet record batch, a run of JSON Lines):
    their positions in the file (a range where consecutive), keys and records (ColumnRecords)."""

    positions: Sequence[int]
    keys: Sequence[str]
    records: Sequence[bytes]


def _block_sources(path: str, field: str, positions: Sequence[int]) -> Sequence[dict]:
    if isinstance(positions, range):
        return FilePositions(path, positions.start, len(positions), field)
    return [{"file": path, field: p} for p in positions]


def block_chunks(block: KeyedBlock, path: str, field: str, size: int, max_bytes: Optional[int]
                 ) -> Iterator[RecordChunk]:
    """A block cut into RecordChunks of at most size records and max_bytes of input."""
    for start in range(0, len(block.records), size):
        stop = min(start + size, len(block.records))
        part = block.records.sliced(start, stop)
        for offset, records in split_by_bytes(part, max_bytes) if max_bytes else [(0, part)]:
            first, last = start + offset, start + offset + len(records)
            yield RecordChunk(block.keys[first:last], records, _block_sources(path, field, block.positions[first:last]))


class ReadKeyedFileFn(AccountedDoFn):
    """(path, key name, ...) -> RecordChunks of up to chunk_size records (and chunk_bytes of
    examples) and dead letters: the reading loop of the instance formats (JSON Lines, CSV, Parquet).
    The element is a file, (path, key name), or a part of one whose further fields say which
    (Parquet's read units). Subclasses give keyed(element), (position, key, serialized example or a
    dead-letter row) per record of it (positions counted in the whole file) or a KeyedBlock of
    clean records, and POSITION, the source field the position goes in ("line", "row").
    A read dead letter (a part of the file that cannot be read) counts as an unreadable region,
    any other as a record read."""

    POSITION = ""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes

    def keyed(self, element: tuple) -> Iterator[Tuple[int, str, object]]:
        raise NotImplementedError

    def process(self, element):
        path = element[0]
        chunks = ChunkBuilder(self._chunk_size, self._chunk_bytes)
        for item in self.keyed(element):
            if isinstance(item, KeyedBlock):
                self._accounting.read(len(item.records))
                self._accounting.read_as_arrays(len(item.records))
                yield from chunks.rest()
                yield from block_chunks(item, path, self.POSITION, self._chunk_size, self._chunk_bytes)
                continue
            position, key, example = item
            if isinstance(example, dict) and example["stage"] == READ:
                self._accounting.unreadable_region(None)
            else:
                self._accounting.read(1)
            if isinstance(example, dict):
                yield from self.reject([example])
                continue
            yield from chunks.add(key, example, {"file": path, self.POSITION: position})
        yield from chunks.rest()
