"""What a file's first bytes say its format is: for inputs whose suffix names none, and to catch an
--input_format (or suffix) that the bytes clearly contradict.

looks_like is pure: valid TFRecord framing (a record length and its masked CRC) is TFRecord; bytes
that start with Parquet's magic (PAR1) are Parquet; text whose first line is a JSON object is JSON
Lines; text whose first line is a header of two or more named cells is CSV. Other text names no format we read; binary data, an empty file or one the
launcher cannot read says nothing (the TFRecord reader reports such a file's regions itself).
"""

import codecs
import csv
import dataclasses
import re
import struct
import zlib
from typing import Optional


from transforms.sources.framing import masked_crc32c
from transforms.sources.text_formats import CSV, JSONL, PARQUET, TFRECORD
from transforms.sources.text import open_text_stream

PARQUET_MAGIC = b"PAR1"
HEAD_BYTES = 4096  # of the uncompressed stream: enough for a TFRecord header or a first line


@dataclasses.dataclass(frozen=True)
class Look:
    """format: what the bytes clearly are (tfrecord, jsonl, csv), else None; text: they are text;
    description: what they look like, in words, for messages."""

    format: Optional[str]
    text: bool
    description: str


def looks_like(head: bytes) -> Look:
    """What the first bytes of a file (uncompressed) look like."""
    if not head:
        return Look(None, False, "an empty file")
    if len(head) >= 12 and masked_crc32c(head[:8]) == struct.unpack("<I", head[8:12])[0]:
        return Look(TFRECORD, False, "TFRecord (its first 12 bytes are a record length and its CRC)")
    if head.startswith(PARQUET_MAGIC):
        return Look(PARQUET, False, "Parquet (it starts with the bytes PAR1)")
    text = _as_text(head)
    if text is None:
        return Look(None, False, f"binary data that is not TFRecord framing (it starts with {head[:8].hex(' ')})")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    shown = repr(first[:60] + ("..." if len(first) > 60 else ""))
    if first.startswith("{"):
        return Look(JSONL, True, f"JSON Lines (its first line is a JSON object: {shown})")
    if first.startswith("["):
        return Look(None, True, f"JSON text that starts with a list ({shown}); JSON Lines holds one object per line")
    if _is_csv_header(first):
        return Look(CSV, True, f"CSV (its first line is a header: {shown})")
    return Look(None, True, f"text that is neither JSON Lines nor CSV (its first line: {shown})")


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # not in text; a NUL is in every small TFRecord length


def _as_text(head: bytes) -> Optional[str]:
    """The head as UTF-8 text (a character cut at the end is fine; a byte-order mark is dropped), or
    None for binary data (control characters, or invalid UTF-8)."""
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def _is_csv_header(line: str) -> bool:
    """Two or more cells, each a name (not empty, not a number)."""
    try:
        cells = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return False
    return len(cells) >= 2 and all(cell.strip() and not _is_number(cell) for cell in cells)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _readable_head(stream, size: int) -> bytes:
    """Up to size bytes of the stream: those before a corrupt compressed spot too."""
    read, pieces, have = getattr(stream, "read_some", stream.read), [], 0
    try:
        while have < size:
            piece = read(size - have)
            if not piece:
                break
            pieces.append(piece)
            have += len(piece)
    except (EOFError, OSError, ValueError, zlib.error):  # a broken stream: its readable head is the evidence
        pass
    return b"".join(pieces)


def read_head(path: str, size: int = HEAD_BYTES) -> bytes:
    """The first size bytes of the file's uncompressed stream (gzip by .gz/.gzip as the TFRecord
    reader does, other compressions by suffix as the text readers do); b"" when it cannot be read."""
    try:  # gzip 16 KiB at a time (Beam's reader would inflate a whole bomb to look at its head)
        with open_text_stream(path) as f:
            return _readable_head(f, size)
    except Exception:  # pylint: disable=broad-except  # unreadable or not the compression its name says: no evidence
        return b""


def contradiction(fmt: str, look: Look) -> bool:
    """Whether bytes that look like this clearly cannot be read as fmt."""
    return (look.format is not None and look.format != fmt) or (fmt in (TFRECORD, PARQUET) and look.text)
