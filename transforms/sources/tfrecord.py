"""ReadKeyedTFRecords: TFRecord files of tf.Example -> (key, serialized bytes) + dead letters.

Keys are deterministic: '<file>:<record index>', with <file> the base name when the matched base
names are unique and the full path otherwise. Files are the unit of parallelism (TFRecord has no
sync markers, so a file cannot be split by offset); a Reshuffle spreads them over workers.
"""

import contextlib
import os
import struct
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.runtime import metrics
from transforms.records.dead_letters import DEAD_LETTER_TAG, READ, dead_letter
from transforms.sources.gzip_recovering import GzipRecoveringReader
from transforms.records.chunk import RecordChunk
from transforms.sources.framing import RECORD_OVERHEAD, Corruption, read_records

GZIP_SUFFIXES = (".gz", ".gzip")


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


def is_gzip(path: str) -> bool:
    return path.lower().endswith(GZIP_SUFFIXES)


@contextlib.contextmanager
def open_records_stream(path: str):
    """The file's uncompressed bytes; gzip through GzipRecoveringReader, which keeps every record
    before a corrupt or truncated spot."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        yield GzipRecoveringReader(raw) if is_gzip(path) else raw


def uncompressed_size(path: str, expected: int) -> int:
    """The byte length of the file's TFRecord stream: the file size, or for gzip the trailer's
    ISIZE (the size modulo 2**32 of the last member, compared modulo 2**32)."""
    if not is_gzip(path):
        return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", f.read(4))[0]
    return expected if isize == expected % (1 << 32) else isize


def iter_chunks(path: str, chunk_size: int, chunk_bytes: Optional[int] = None
                ) -> Iterator[Union[Tuple[int, List[bytes]], Corruption]]:
    """(index of the first record, records) chunks of a file, and a Corruption per bad region.

    A chunk holds at most chunk_size records and, when chunk_bytes is set, at most chunk_bytes of
    serialized input (a single larger record still makes a chunk of its own).
    """
    for item in _iter_counted_chunks(path, chunk_size):
        if isinstance(item, Corruption) or not chunk_bytes:
            yield item
            continue
        first, records = item
        for offset, part in split_by_bytes(records, chunk_bytes):
            yield first + offset, part


def split_by_bytes(records: List[bytes], max_bytes: int) -> Iterator[Tuple[int, List[bytes]]]:
    """Consecutive (offset, records) slices of at most max_bytes each (at least one record)."""
    if sum(map(len, records)) <= max_bytes:
        yield 0, records
        return
    start = total = 0
    for i, record in enumerate(records):
        if i > start and total + len(record) > max_bytes:
            yield start, records[start:i]
            start, total = i, 0
        total += len(record)
    yield start, records[start:]


def _iter_counted_chunks(path: str, chunk_size: int) -> Iterator[Union[Tuple[int, List[bytes]], Corruption]]:
    """Chunks of up to chunk_size records, and a Corruption per bad region.

    The fast way is tf.data (C++ framing and CRC checks, prefetched on TensorFlow's threads while
    the chunk before is scored). It stops at the first problem without saying where, so on any
    error the file is read again by the framing reader, which skips what was already emitted and
    reports each corruption precisely, reading on past a bad data CRC.
    """
    import tensorflow as tf

    emitted = consumed = 0
    batches = iter(tf.data.TFRecordDataset(
        path, compression_type="GZIP" if is_gzip(path) else "", buffer_size=1 << 22
    ).batch(chunk_size).prefetch(2))
    while True:
        try:
            records = next(batches).numpy().tolist()
        except StopIteration:
            # TensorFlow ends quietly at a partial header: only a clean end if every byte was used
            if consumed == uncompressed_size(path, consumed):
                return
            break
        except tf.errors.OpError:  # corrupt or truncated data, or a file system TF cannot read
            break
        yield emitted, records
        emitted += len(records)
        consumed += sum(map(len, records)) + RECORD_OVERHEAD * len(records)
    records, first = [], None
    with open_records_stream(path) as stream:
        for item in read_records(stream):
            if item.index < emitted:
                continue
            if isinstance(item, Corruption):
                if records:
                    yield first, records
                    records = []
                yield item
                continue
            if not records:
                first = item.index
            records.append(item.data)
            if len(records) >= chunk_size:
                yield first, records
                records = []
    if records:
        yield first, records


def corruption_dead_letter(path: str, key: str, item: Corruption):
    detail = "" if not item.fatal else "; the rest of the file is unreadable"
    return dead_letter(READ, f"{path} at byte {item.offset}: {item.reason}{detail}",
                       key=key, raw=item.data, source=f"{path}@{item.offset}")


def _count_read(n: int) -> None:
    metrics.counter(metrics.RECORDS_READ).inc(n)
    metrics.PROGRESS.add(metrics.RECORDS_READ, n)


class ReadRecordsFn(beam.DoFn):
    """(path, key name) -> (key, bytes) per record; a dead letter (stage read) per corrupt region."""

    def process(self, element):
        path, name = element
        with open_records_stream(path) as stream:
            for item in read_records(stream):
                key = f"{name}:{item.index}"
                if isinstance(item, Corruption):
                    metrics.dead_letter_counter(READ).inc()
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, corruption_dead_letter(path, key, item))
                else:
                    _count_read(1)
                    yield key, item.data


class ReadRecordChunksFn(beam.DoFn):
    """(path, key name) -> RecordChunks of up to chunk_size records (and chunk_bytes of input);
    dead letters as ReadRecordsFn."""

    def __init__(self, chunk_size: int, chunk_bytes: Optional[int] = None, with_source: bool = False):
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes
        self._with_source = with_source

    def process(self, element):
        path, name = element
        for item in iter_chunks(path, self._chunk_size, self._chunk_bytes):
            if isinstance(item, Corruption):
                metrics.dead_letter_counter(READ).inc()
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER_TAG, corruption_dead_letter(path, f"{name}:{item.index}", item))
                continue
            first, records = item
            _count_read(len(records))
            indices = range(first, first + len(records))
            sources = [{"file": path, "record": i} for i in indices] if self._with_source else None
            yield RecordChunk([f"{name}:{i}" for i in indices], records, sources)


class ReadKeyedTFRecords(beam.PTransform):
    """Reads TFRecord files matching the patterns (gzip by extension) as keyed records.

    Returns (records, dead_letters): records are (key, bytes), or RecordChunks with chunk_size
    (and chunk_bytes), which carry each record's {"file", "record"} when with_source is set. The patterns are expanded at construction so an empty glob
    fails before the pipeline starts.
    """

    def __init__(self, patterns: Iterable[str], chunk_size: Optional[int] = None,
                 chunk_bytes: Optional[int] = None, with_source: bool = False):
        super().__init__()
        self._paths = expand_patterns(list(patterns))
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes
        self._with_source = with_source

    @property
    def paths(self) -> List[str]:
        return list(self._paths)

    def expand(self, pbegin):
        return read_files(pbegin, self._paths, "ReadRecords",
                          ReadRecordsFn() if self._chunk_size is None
                          else ReadRecordChunksFn(self._chunk_size, self._chunk_bytes, self._with_source))


def read_files(pbegin, paths: Sequence[str], label: str, read_fn: beam.DoFn):
    """(path, key name) per file, spread over workers, read by read_fn: (records, dead letters)."""
    names = key_names(paths)
    result = (
        pbegin
        | "Files" >> beam.Create([(p, names[p]) for p in paths])
        | "SpreadFiles" >> beam.Reshuffle()
        | label >> beam.ParDo(read_fn).with_outputs(DEAD_LETTER_TAG, main="records"))
    return result.records, result[DEAD_LETTER_TAG]
