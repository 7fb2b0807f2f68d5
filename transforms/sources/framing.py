"""Pure TFRecord framing: read records from a byte stream, reporting corruption precisely.

Framing per record: uint64 length, masked crc32c of the length, data, masked crc32c of the data.
A bad data CRC spoils one record but keeps the framing, so reading goes on after it; a bad or
truncated length loses the framing, so reading stops there. Either way the caller learns the
byte offset (in the uncompressed stream) and can emit a dead letter instead of failing.

Memory is bounded whatever the file holds: a length is checked against the cap
(max_record_bytes, default MAX_RECORD_BYTES) before anything is read for it, and a record over
the cap is skipped in pieces (its first MAX_INPUT_BYTES kept for its dead letter), so a small
gzip file whose records claim gigabytes never has more than a cap's worth in memory.
"""

import dataclasses
import struct
import zlib
from typing import BinaryIO, Iterator, List, NamedTuple, Union

import google_crc32c

from transforms.records.dead_letters import MAX_INPUT_BYTES, InputHead

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
RECORD_OVERHEAD = _HEADER.size + _FOOTER.size  # framing bytes around each record's data
# A length beyond this is garbage that happened to match its CRC (a protobuf cannot be this
# large): the framing is taken as lost.
IMPLAUSIBLE_RECORD_BYTES = 1 << 31
# The largest record read into memory; a longer one (with a good length CRC) is skipped unread
# and becomes one read dead letter, and reading goes on after it.
MAX_RECORD_BYTES = 64 << 20
_BLOCK = 1 << 20  # bytes read from the stream at a time
_STREAM_ERRORS = (EOFError, OSError, ValueError, zlib.error)  # gzip: truncated or corrupt stream


def masked_crc32c(data: bytes) -> int:
    return _mask(google_crc32c.value(data))


def encode_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + _FOOTER.pack(masked_crc32c(header)) + data + _FOOTER.pack(masked_crc32c(data))


@dataclasses.dataclass(frozen=True)
class Record:
    index: int   # position of the record in the file, counting corrupt ones
    offset: int  # byte offset of its header in the (uncompressed) stream
    data: bytes


# What went wrong, as the dead letter's error_type
DATA_CRC_MISMATCH = "DataCrcMismatch"
LENGTH_CRC_MISMATCH = "LengthCrcMismatch"
TRUNCATED_RECORD = "TruncatedRecord"
IMPLAUSIBLE_LENGTH = "ImplausibleLength"
RECORD_TOO_LARGE = "RecordTooLarge"
CORRUPT_COMPRESSION = "CorruptCompressedStream"
NOT_GZIP = "NotGzip"


@dataclasses.dataclass(frozen=True)
class Corruption:
    index: int
    offset: int
    reason: str
    fatal: bool  # True: framing lost, nothing after this offset can be read
    data: Union[bytes, InputHead, None] = None  # the payload when only its CRC was wrong; the head of one too large
    kind: str = DATA_CRC_MISMATCH


class BlockReader:
    """A byte stream read in blocks of _BLOCK, handed out in exact pieces. The stream's error (a
    corrupt gzip stream) is raised only by a take that needs bytes beyond it; streams with
    read_some (GzipRecoveringReader) give every byte before it."""

    def __init__(self, stream: BinaryIO):
        self._read = getattr(stream, "read_some", stream.read)
        self._buffer = b""
        self._pos = 0
        self.offset = 0  # of the next byte taken, in the stream

    @property
    def buffer(self) -> bytes:
        return self._buffer

    @property
    def position(self) -> int:
        """Of the next byte taken, in buffer."""
        return self._pos

    def move_to(self, position: int) -> None:
        """Takes the buffer's bytes up to position (read from buffer directly)."""
        self.offset += position - self._pos
        self._pos = position

    def take(self, size: int) -> bytes:
        """The next size bytes, fewer only at the end of the stream."""
        if len(self._buffer) - self._pos < size:
            self._fill(size)
        data = self._buffer[self._pos:self._pos + size]
        self._pos += len(data)
        self.offset += len(data)
        return data

    def _fill(self, size: int) -> None:
        pieces: List[bytes] = [self._buffer[self._pos:]]
        have = len(pieces[0])
        try:
            while have < size:
                piece = self._read(max(_BLOCK, size - have))
                if not piece:
                    return
                pieces.append(piece)
                have += len(piece)
        finally:  # what was read before an error stays readable
            self._buffer, self._pos = b"".join(pieces), 0

    def skip(self, size: int) -> int:
        """Skips size bytes in pieces (never holding them whole); returns how many there were."""
        left = size
        while left:
            piece = self.take(min(left, _BLOCK))
            if not piece:
                break
            left -= len(piece)
        return size - left


class Run(NamedTuple):
    """Consecutive good records: the index and header offset of the first, and their data."""
    first: int
    offset: int
    records: List[bytes]


def read_records(stream: BinaryIO, max_record_bytes: int = MAX_RECORD_BYTES
                 ) -> Iterator[Union[Record, Corruption]]:
    """Yields every record, and a Corruption for each unreadable one (the last, if fatal); a
    record over max_record_bytes is a Corruption (RECORD_TOO_LARGE) holding its head."""
    for item in record_runs(stream, max_record_bytes):
        if isinstance(item, Corruption):
            yield item
            continue
        offset = item.offset
        for i, data in enumerate(item.records):
            yield Record(item.first + i, offset, data)
            offset += RECORD_OVERHEAD + len(data)


def record_runs(stream: BinaryIO, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Union[Run, Corruption]]:
    """read_records in Runs: the records wholly inside each block read are framed in one tight
    loop (about a quarter of the cost of one record at a time); the rest one by one."""
    reader, index = BlockReader(stream), 0
    while True:
        run = _buffered_run(reader, index, max_record_bytes)
        if run.records:
            yield run
            index += len(run.records)
        offset = reader.offset
        try:
            item = _next_item(reader, index, offset, max_record_bytes)
        except _STREAM_ERRORS as e:
            item = Corruption(index, offset, f"compressed stream unreadable: {e}", True, kind=CORRUPT_COMPRESSION)
        if item is None:
            return
        yield item if isinstance(item, Corruption) else Run(index, item.offset, [item.data])
        if isinstance(item, Corruption) and item.fatal:
            return
        index += 1


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _buffered_run(reader: "BlockReader", index: int, cap: int) -> Run:
    """The good records wholly in the reader's buffer from its position on; stops before anything
    else (a record cut by the buffer's end, a bad CRC, a length over the cap), which _next_item reads."""
    buffer, pos, records = reader.buffer, reader.position, []
    end, offset = len(buffer), reader.offset
    crc, header_at, crc_at = google_crc32c.value, _HEADER.unpack_from, _FOOTER.unpack_from
    while pos + 16 <= end:  # _mask inlined: this loop is the reader's whole cost
        length, length_crc = header_at(buffer, pos)
        stop = pos + 12 + length
        if length > cap or stop + 4 > end:
            break
        value = crc(buffer[pos:pos + 8])
        if (((value >> 15) | (value << 17)) + 0xA282EAD8) & 0xFFFFFFFF != length_crc:
            break
        data = buffer[pos + 12:stop]
        value = crc(data)
        if (((value >> 15) | (value << 17)) + 0xA282EAD8) & 0xFFFFFFFF != crc_at(buffer, stop)[0]:
            break
        records.append(data)
        pos = stop + 4
    reader.move_to(pos)
    return Run(index, offset, records)


def _next_item(reader: BlockReader, index: int, offset: int, cap: int) -> Union[Record, Corruption, None]:
    """The record at the reader's offset, its Corruption, or None at a clean end."""
    header = reader.take(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        return Corruption(index, offset, f"truncated record header ({len(header)} of 12 bytes)", True,
                          kind=TRUNCATED_RECORD)
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        return Corruption(index, offset, "length CRC mismatch (framing lost)", True, kind=LENGTH_CRC_MISMATCH)
    if length > IMPLAUSIBLE_RECORD_BYTES:
        return Corruption(index, offset, f"implausible record length {length}", True, kind=IMPLAUSIBLE_LENGTH)
    if length > cap:
        return _skipped_record(reader, index, offset, length, cap)
    body = reader.take(length + _FOOTER.size)
    if len(body) < length + _FOOTER.size:
        return _truncated(index, offset, len(body), length)
    data = body[:length]
    (data_crc,) = _FOOTER.unpack_from(body, length)
    if masked_crc32c(data) != data_crc:
        return Corruption(index, offset, "data CRC mismatch", fatal=False, data=data)
    return Record(index, offset, data)


def _truncated(index: int, offset: int, got: int, length: int) -> Corruption:
    return Corruption(index, offset, f"truncated record ({got} of {length + 4} bytes after the header)", True,
                      kind=TRUNCATED_RECORD)


def _skipped_record(reader: BlockReader, index: int, offset: int, length: int, cap: int) -> Corruption:
    """A record over the cap: its head kept, the rest skipped in pieces; reading goes on after it."""
    head = reader.take(min(length, MAX_INPUT_BYTES))
    got = len(head) + reader.skip(length + _FOOTER.size - len(head))
    if got < length + _FOOTER.size:
        return _truncated(index, offset, got, length)
    return Corruption(index, offset, f"record of {length:,} bytes is over the reader's limit of {cap:,} bytes; "
                                     "skipped unread", fatal=False, data=InputHead(head, length),
                      kind=RECORD_TOO_LARGE)
