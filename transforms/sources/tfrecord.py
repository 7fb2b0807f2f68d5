"""ReadKeyedTFRecords: TFRecord files of tf.Example -> RecordChunks of keyed records + dead letters.

Keys are deterministic: '<file>:<record index>', with <file> the base name when the matched base
names are unique and the full path otherwise. Files are matched on the workers and are the unit of
reading (TFRecord has no sync markers, so a file cannot be split by offset); a Reshuffle spreads
them over workers, and a job may redistribute the chunks read (pipelines.inputs).
"""

import contextlib
import itertools
import os
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records.chunk import (DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE, FileRecords, PositionKeys, RecordChunk,
                                     split_by_bytes)
from transforms.records.dead_letters import MAX_INPUT_BYTES, READ, InputHead, dead_letter
from transforms.records.serialized import SerializedRecords
from transforms.runtime.accounting import AccountedDoFn
from transforms.sources.files import check_local_patterns, read_files
from transforms.sources.framing import MAX_RECORD_BYTES, NOT_GZIP, RECORD_OVERHEAD, Corruption, record_runs
from transforms.sources.gzip_recovering import GzipRecoveringReader

GZIP_SUFFIXES = (".gz", ".gzip")


def is_gzip(path: str) -> bool:
    return path.lower().endswith(GZIP_SUFFIXES)


@contextlib.contextmanager
def open_records_stream(path: str):
    """The file's uncompressed bytes; gzip through GzipRecoveringReader, which keeps every record
    before a corrupt or truncated spot."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        yield GzipRecoveringReader(raw) if is_gzip(path) else raw


def file_size(path: str) -> int:
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def iter_chunks(path: str, chunk_size: int, chunk_bytes: Optional[int] = None,
                max_record_bytes: int = MAX_RECORD_BYTES
                ) -> Iterator[Union[Tuple[int, Sequence[bytes]], Corruption]]:
    """(index of the first record, records) chunks of a file, and a Corruption per bad region.

    A chunk holds at most chunk_size records and, when chunk_bytes is set, at most chunk_bytes of
    serialized input (a single larger record still makes a chunk of its own). A record over
    max_record_bytes is a Corruption (RECORD_TOO_LARGE), never held whole.
    """
    for item in _iter_counted_chunks(path, chunk_size, chunk_bytes, max_record_bytes):
        if isinstance(item, Corruption) or not chunk_bytes:
            yield item
            continue
        first, records = item
        for offset, part in split_by_bytes(records, chunk_bytes):
            yield first + offset, part


def record_iterator(path: str, compression: str):
    """TensorFlow's C++ record reader over a file: what tf.compat.v1.io.tf_record_iterator
    returns, taken directly because that function logs a deprecation warning on first use."""
    try:
        from tensorflow.python.lib.io import _pywrap_record_io
    except ImportError:  # a TensorFlow that moved it: the public (deprecated) way
        import tensorflow as tf

        return tf.compat.v1.io.tf_record_iterator(path, tf.io.TFRecordOptions(compression_type=compression))
    return _pywrap_record_io.RecordIterator(path, compression)


def _iter_counted_chunks(path: str, chunk_size: int, chunk_bytes: Optional[int], max_record_bytes: int
                         ) -> Iterator[Union[Tuple[int, Sequence[bytes]], Corruption]]:
    """Chunks of up to chunk_size records, and a Corruption per bad region.

    Plain files: TensorFlow's record iterator, C++ framing and CRC checks, about 0.7 us of one
    core per small record (tf.data's TFRecordDataset costs about 2 us of CPU per record, on its own
    threads, which a CPU-bound job pays for just the same). It stops at the first problem without
    saying where, so on any error (or a record over the cap) the file is read again by the framing
    reader, which skips what was already emitted and reports each corruption precisely, reading on
    past a bad data CRC. A plain file's record is in memory only as far as the file holds it.
    gzip files: the framing reader only, over GzipRecoveringReader. TensorFlow's gzip reader would
    inflate a record whole before its length could be checked (a 3 MB file can hold a record of
    3 GB); ours checks every length against max_record_bytes before reading it.
    """
    not_gzip = gzip_name_problem(path)
    if not_gzip:
        yield not_gzip
        return
    emitted = 0 if is_gzip(path) else (yield from _fast_chunks(path, chunk_size, max_record_bytes))
    if emitted is not None:
        yield from _framed_chunks(path, chunk_size, emitted, chunk_bytes, max_record_bytes)


def _fast_chunks(path: str, chunk_size: int, max_record_bytes: int) -> Iterator[Tuple[int, Sequence[bytes]]]:
    """Chunks of a plain file read by TensorFlow's record iterator. Returns None after a clean end
    of the file, else the number of records emitted before it stopped or before a record over
    max_record_bytes (the framing reader goes on from there)."""
    import tensorflow as tf

    emitted = consumed = 0
    try:
        records_in_file = record_iterator(path, "")
    except (tf.errors.OpError, OSError):  # a file system TensorFlow cannot read: all of it by the framing reader
        return 0
    while True:
        try:
            records = list(itertools.islice(records_in_file, chunk_size))
        except (tf.errors.OpError, OSError):  # corrupt or truncated data
            return emitted
        if not records:
            # TensorFlow ends quietly at a partial header: only a clean end if every byte was used
            return None if consumed == file_size(path) else emitted
        chunk = SerializedRecords(records)
        too_large = np.flatnonzero(chunk.byte_lengths() > max_record_bytes)
        if too_large.size:
            if too_large[0]:
                yield emitted, chunk.sliced(0, int(too_large[0]))
            return emitted + int(too_large[0])
        yield emitted, chunk
        emitted += len(records)
        consumed += int(chunk.byte_lengths().sum()) + RECORD_OVERHEAD * len(records)


def _framed_chunks(path: str, chunk_size: int, emitted: int, chunk_bytes: Optional[int], max_record_bytes: int
                   ) -> Iterator[Union[Tuple[int, Sequence[bytes]], Corruption]]:
    """Chunks read by our framing reader, from record index emitted on, and a Corruption per bad
    region; a chunk closes at chunk_size records or chunk_bytes of input, so a file of large
    records is never held whole."""
    pending = _PendingChunk(chunk_size, chunk_bytes)
    with open_records_stream(path) as stream:
        for item in record_runs(stream, max_record_bytes):
            if isinstance(item, Corruption):
                if item.index >= emitted:
                    yield from pending.flush()
                    yield item
                continue
            skip = max(0, emitted - item.first)
            if skip < len(item.records):
                yield from pending.add(item.first + skip, item.records[skip:])
    yield from pending.flush()


class _PendingChunk:
    """Records read but not yet handed over: out in chunks of chunk_size records, or as soon as
    they hold chunk_bytes."""

    def __init__(self, chunk_size: int, chunk_bytes: Optional[int]):
        self._chunk_size, self._chunk_bytes = chunk_size, chunk_bytes
        self._first, self._records, self._size = 0, [], 0

    def add(self, first: int, records: List[bytes]) -> Iterator[Tuple[int, SerializedRecords]]:
        if not self._records:
            self._first = first
        self._records.extend(records)
        self._size += sum(map(len, records)) if self._chunk_bytes else 0
        while len(self._records) >= self._chunk_size:
            chunk, self._records = self._records[:self._chunk_size], self._records[self._chunk_size:]
            yield self._first, SerializedRecords(chunk)
            self._first += len(chunk)
            self._size = sum(map(len, self._records)) if self._chunk_bytes else 0
        if self._chunk_bytes and self._size >= self._chunk_bytes:
            yield from self.flush()

    def flush(self) -> Iterator[Tuple[int, SerializedRecords]]:
        if self._records:
            yield self._first, SerializedRecords(self._records)
        self._records, self._size = [], 0


GZIP_MAGIC = b"\x1f\x8b"
MAX_REGION_BYTES = MAX_INPUT_BYTES  # of an unreadable region, kept in its dead letter (input_base64)


def gzip_name_problem(path: str) -> Optional[Corruption]:
    """A Corruption for a non-empty file named .gz/.gzip that is not gzip, else None."""
    if not is_gzip(path):
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        head = f.read(2)
    if not head or head == GZIP_MAGIC:
        return None
    return Corruption(0, 0, f"the file is named {os.path.splitext(path)[1]} but is not gzip (it does not start "
                            "with gzip's bytes 1f 8b); if it is plain TFRecord, rename it without the suffix",
                      fatal=True, kind=NOT_GZIP)


def unreadable_region(path: str, item: Corruption) -> Tuple[Optional[int], Optional[bytes]]:
    """(bytes skipped, the first MAX_REGION_BYTES of them) of a fatal corruption: the rest of the
    file from item.offset. For gzip the offset is in the uncompressed stream, which cannot be
    read past the corrupt spot: (None, None), unless the whole file was skipped (not gzip)."""
    if is_gzip(path) and item.kind != NOT_GZIP:
        return None, None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(item.offset)
        head = f.read(MAX_REGION_BYTES)
    return file_size(path) - item.offset, head


def corruption_dead_letter(path: str, key: str, item: Corruption) -> dict:
    """One dead letter per unreadable region: a record whose data CRC failed (its bytes), or the
    rest of the file where the framing was lost (offset, bytes skipped and their first 64 KiB)."""
    if not item.fatal:
        return dead_letter(READ, f"{path} at byte {item.offset}: {item.reason}", key=key, raw=item.data,
                           source={"file": path, "offset": item.offset}, error_type=item.kind)
    skipped, head = unreadable_region(path, item)
    size = "the rest of the file" if skipped is None else f"the rest of the file, {skipped:,} bytes,"
    raw = head if head is None or len(head) == skipped else InputHead(head, skipped)  # its hash only when read whole
    return dead_letter(READ, f"{path} at byte {item.offset}: {item.reason}; {size} cannot be read",
                       key=key, raw=raw, error_type=item.kind,
                       source={"file": path, "offset": item.offset, "bytes_skipped": skipped})


class ReadRecordChunksFn(AccountedDoFn):
    """(path, key name) -> RecordChunks of up to chunk_size records (and chunk_bytes of input),
    each record keyed '<name>:<index>' and sourced {"file", "record"}; a dead letter (stage read)
    per corrupt region."""

    def __init__(self, chunk_size: int, chunk_bytes: Optional[int] = None,
                 max_record_bytes: int = MAX_RECORD_BYTES):
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes
        self._max_record_bytes = max_record_bytes

    def process(self, element):
        path, name = element
        for item in iter_chunks(path, self._chunk_size, self._chunk_bytes, self._max_record_bytes):
            if isinstance(item, Corruption):
                row = corruption_dead_letter(path, f"{name}:{item.index}", item)
                if item.fatal:
                    self._accounting.unreadable_region(row["source"]["bytes_skipped"])
                yield from self.reject([row])
                continue
            first, records = item
            self._accounting.read(len(records))
            yield RecordChunk(PositionKeys(name, first, len(records)), records,
                              FileRecords(path, first, len(records)))


class ReadKeyedTFRecords(beam.PTransform):
    """Reads TFRecord files matching the patterns (gzip by extension) as RecordChunks.

    Returns WithDeadLetters(RecordChunks, dead letters). Patterns are matched on the workers; a
    local pattern that matches nothing fails here, before the pipeline starts. A record over
    max_record_bytes is one read dead letter (RecordTooLarge) holding its first 64 KiB.
    """

    def __init__(self, patterns: Iterable[str], chunk_size: int = DEFAULT_CHUNK_SIZE,
                 chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES, max_record_bytes: int = MAX_RECORD_BYTES):
        super().__init__()
        self._patterns = list(patterns)
        check_local_patterns(self._patterns)
        self._fn = ReadRecordChunksFn(chunk_size, chunk_bytes, max_record_bytes)

    def expand(self, pbegin):
        return read_files(pbegin, self._patterns, "ReadRecords", self._fn)
