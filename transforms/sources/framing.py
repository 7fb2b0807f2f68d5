"""Pure TFRecord framing: read records from a byte stream, reporting corruption precisely.

Framing per record: uint64 length, masked crc32c of the length, data, masked crc32c of the data.
A bad data CRC spoils one record but keeps the framing, so reading goes on after it; a bad or
truncated length loses the framing, so reading stops there. Either way the caller learns the
byte offset (in the uncompressed stream) and can emit a dead letter instead of failing.
"""

import dataclasses
import struct
import zlib
from typing import BinaryIO, Iterator, Optional, Union

import google_crc32c

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
RECORD_OVERHEAD = _HEADER.size + _FOOTER.size  # framing bytes around each record's data
# A length beyond this is garbage that happened to match its CRC; refuse to allocate it.
MAX_RECORD_BYTES = 1 << 31


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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
CORRUPT_COMPRESSION = "CorruptCompressedStream"
NOT_GZIP = "NotGzip"


@dataclasses.dataclass(frozen=True)
class Corruption:
    index: int
    offset: int
    reason: str
    fatal: bool  # True: framing lost, nothing after this offset can be read
    data: Optional[bytes] = None  # the payload when only its CRC was wrong
    kind: str = DATA_CRC_MISMATCH


def read_records(stream: BinaryIO) -> Iterator[Union[Record, Corruption]]:
    """Yields every record, and a Corruption for each unreadable one (the last, if fatal)."""
    offset = index = 0
    while True:
        try:
            header = stream.read(_HEADER.size)
        except (EOFError, OSError, ValueError, zlib.error) as e:  # gzip: truncated or corrupt stream
            yield Corruption(index, offset, f"compressed stream unreadable: {e}", True, kind=CORRUPT_COMPRESSION)
            return
        if not header:
            return
        if len(header) < _HEADER.size:
            yield Corruption(index, offset, f"truncated record header ({len(header)} of 12 bytes)", True,
                             kind=TRUNCATED_RECORD)
            return
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            yield Corruption(index, offset, "length CRC mismatch (framing lost)", True, kind=LENGTH_CRC_MISMATCH)
            return
        if length > MAX_RECORD_BYTES:
            yield Corruption(index, offset, f"implausible record length {length}", True, kind=IMPLAUSIBLE_LENGTH)
            return
        try:
            body = stream.read(length + _FOOTER.size)
        except (EOFError, OSError, ValueError, zlib.error) as e:
            yield Corruption(index, offset, f"compressed stream unreadable: {e}", True, kind=CORRUPT_COMPRESSION)
            return
        if len(body) < length + _FOOTER.size:
            yield Corruption(index, offset,
                             f"truncated record ({len(body)} of {length + 4} bytes after the header)", True,
                             kind=TRUNCATED_RECORD)
            return
        data = body[:length]
        (data_crc,) = _FOOTER.unpack_from(body, length)
        if masked_crc32c(data) != data_crc:
            yield Corruption(index, offset, "data CRC mismatch", fatal=False, data=data)
        else:
            yield Record(index, offset, data)
        offset += _HEADER.size + length + _FOOTER.size
        index += 1
