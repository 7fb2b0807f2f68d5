"""ReadKeyedTFRecords: TFRecord files of tf.Example -> RecordChunks of keyed records + dead letters.

Keys are deterministic: '<file>:<record index>', with <file> the base name when the matched base
names are unique and the full path otherwise. Files are matched on the workers and are the unit of
reading (TFRecord has no sync markers, so a file cannot be split by offset); a Reshuffle spreads
them over workers, and a job may redistribute the chunks read (pipelines.inputs).
"""

import contextlib
import itertools
import os
import struct
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records.chunk import (DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE, FileRecords, PositionKeys, RecordChunk,
                                     split_by_bytes)
from transforms.records.dead_letters import READ, dead_letter
from transforms.records.serialized import SerializedRecords
from transforms.runtime.accounting import AccountedDoFn
from transforms.sources.files import check_local_patterns, read_files
from transforms.sources.framing import NOT_GZIP, RECORD_OVERHEAD, Corruption, read_records
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
                ) -> Iterator[Union[Tuple[int, Sequence[bytes]], Corruption]]:
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


def record_iterator(path: str, compression: str):
    """TensorFlow's C++ record reader over a file: what tf.compat.v1.io.tf_record_iterator
    returns, taken directly because that function logs a deprecation warning on first use."""
    try:
        from tensorflow.python.lib.io import _pywrap_record_io
    except ImportError:  # a TensorFlow that moved it: the public (deprecated) way
        import tensorflow as tf

        return tf.compat.v1.io.tf_record_iterator(path, tf.io.TFRecordOptions(compression_type=compression))
    return _pywrap_record_io.RecordIterator(path, compression)


def _iter_counted_chunks(path: str, chunk_size: int) -> Iterator[Union[Tuple[int, Sequence[bytes]], Corruption]]:
    """Chunks of up to chunk_size records, and a Corruption per bad region.

    The fast way is TensorFlow's record iterator: C++ framing and CRC checks, about 0.7 us of one
    core per small record (tf.data's TFRecordDataset costs about 2 us of CPU per record, on its own
    threads, which a CPU-bound job pays for just the same). It stops at the first problem without
    saying where, so on any error the file is read again by the framing reader, which skips what
    was already emitted and reports each corruption precisely, reading on past a bad data CRC.
    """
    not_gzip = gzip_name_problem(path)
    if not_gzip:
        yield not_gzip
        return
    emitted = yield from _fast_chunks(path, chunk_size)
    if emitted is not None:
        yield from _framed_chunks(path, chunk_size, emitted)


def _fast_chunks(path: str, chunk_size: int) -> Iterator[Tuple[int, Sequence[bytes]]]:
    """Chunks read by TensorFlow's record iterator. Returns None after a clean end of the file, else
    the number of records emitted before it stopped (the framing reader goes on from there)."""
    import tensorflow as tf

    emitted = consumed = 0
    try:
        records_in_file = record_iterator(path, "GZIP" if is_gzip(path) else "")
    except (tf.errors.OpError, OSError):  # a file system TensorFlow cannot read: all of it by the framing reader
        return 0
    while True:
        try:
            records = list(itertools.islice(records_in_file, chunk_size))
        except (tf.errors.OpError, OSError):  # corrupt or truncated data
            return emitted
        if not records:
            # TensorFlow ends quietly at a partial header: only a clean end if every byte was used
            return None if consumed == uncompressed_size(path, consumed) else emitted
        chunk = SerializedRecords(records)
        yield emitted, chunk
        emitted += len(records)
        consumed += int(chunk.byte_lengths().sum()) + RECORD_OVERHEAD * len(records)


def _framed_chunks(path: str, chunk_size: int, emitted: int
                   ) -> Iterator[Union[Tuple[int, Sequence[bytes]], Corruption]]:
    """Chunks read by our framing reader, from record index emitted on, and a Corruption per bad region."""
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


GZIP_MAGIC = b"\x1f\x8b"
MAX_REGION_BYTES = 64 << 10  # of an unreadable region, kept in its dead letter (input_base64)


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
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    return size - item.offset, head


def corruption_dead_letter(path: str, key: str, item: Corruption) -> dict:
    """One dead letter per unreadable region: a record whose data CRC failed (its bytes), or the
    rest of the file where the framing was lost (offset, bytes skipped and their first 64 KiB)."""
    if not item.fatal:
        return dead_letter(READ, f"{path} at byte {item.offset}: {item.reason}", key=key, raw=item.data,
                           source={"file": path, "offset": item.offset}, error_type=item.kind)
    skipped, head = unreadable_region(path, item)
    size = "the rest of the file" if skipped is None else f"the rest of the file, {skipped:,} bytes,"
    return dead_letter(READ, f"{path} at byte {item.offset}: {item.reason}; {size} cannot be read",
                       key=key, raw=head, error_type=item.kind,
                       source={"file": path, "offset": item.offset, "bytes_skipped": skipped})


class ReadRecordChunksFn(AccountedDoFn):
    """(path, key name) -> RecordChunks of up to chunk_size records (and chunk_bytes of input),
    each record keyed '<name>:<index>' and sourced {"file", "record"}; a dead letter (stage read)
    per corrupt region."""

    def __init__(self, chunk_size: int, chunk_bytes: Optional[int] = None):
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes


    def process(self, element):
        path, name = element
        for item in iter_chunks(path, self._chunk_size, self._chunk_bytes):
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
    local pattern that matches nothing fails here, before the pipeline starts.
    """

    def __init__(self, patterns: Iterable[str], chunk_size: int = DEFAULT_CHUNK_SIZE,
                 chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self._patterns = list(patterns)
        check_local_patterns(self._patterns)
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes

    def expand(self, pbegin):
        return read_files(pbegin, self._patterns, "ReadRecords", ReadRecordChunksFn(self._chunk_size, self._chunk_bytes))
