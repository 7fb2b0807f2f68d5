"""JSON Lines and CSV text -> instances (dicts of Python values), with their line numbers.

Pure parsing, before transforms.sources.instances turns an instance into a tf.Example. Each item is
(line number, instance or InstanceError, the line's raw bytes); line numbers are 1-based, as an
editor shows them (a CSV header is line 1). Blank lines are not instances and are skipped.

CSV cells are text: a spec feature's cell is read as its dtype (float32: a number; int64: an
integer, or true/false; string: the text), a feature with several values (a shape, or varlen)
takes a JSON list ("[1, 2, 3]", '["a", "b"]'), which then converts exactly as the same list in
JSON Lines does, an empty cell is a null, and columns the spec does not name stay text.
"""

import csv
import io
import json
import re
import zlib
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import orjson

from models.serving.feature_spec import RAW, Feature
from transforms.records.dead_letters import MAX_INPUT_BYTES, InputHead
from transforms.sources.instances import ConversionError

JSONL, CSV, TFRECORD, PARQUET = "jsonl", "csv", "tfrecord", "parquet"
INPUT_FORMATS = (TFRECORD, JSONL, CSV, PARQUET)
_SUFFIXES = {".jsonl": JSONL, ".json": JSONL, ".ndjson": JSONL, ".csv": CSV,
             ".tfrecord": TFRECORD, ".tfrecords": TFRECORD, ".tfr": TFRECORD, ".parquet": PARQUET}
_COMPRESSION = (".gz", ".gzip", ".bz2", ".deflate", ".zst", ".zstd")
_TRUE, _FALSE = ("true", "t", "yes"), ("false", "f", "no")


class InstanceError(ValueError):
    """A line that is not an instance (stage decode) or whose values cannot be read (stage convert)."""

    def __init__(self, stage: str, message: str, fields: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.stage = stage
        self.fields = fields or {}  # what could be read of the line (a CSV row's cells)


Item = Tuple[int, Union[Dict[str, Any], InstanceError], Union[bytes, InputHead]]

# The longest line read into memory; a longer one is one decode dead letter holding its head.
MAX_LINE_BYTES = 64 << 20
_PIECE = 1 << 20  # bytes read at a time
_STREAM_ERRORS = (EOFError, OSError, ValueError, zlib.error)  # gzip: truncated or corrupt stream


class LineProblem(NamedTuple):
    """A line that is not handed over whole: over the line limit (size: its length), or cut by an
    unreadable compressed stream (size None: the rest of the file cannot be read)."""
    head: bytes
    size: Optional[int]
    reason: str

    @property
    def raw(self) -> Union[bytes, InputHead]:
        return self.head if self.size is None else InputHead(self.head, self.size)


class _LinePieces:
    """The pieces of the line being read: all of them up to max_bytes, then only its head."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._pieces: List[bytes] = []
        self._size = 0
        self._over = False

    def add(self, piece: bytes) -> None:
        self._size += len(piece)
        if not self._over:
            self._pieces.append(piece)
            self._over = self._size > self._max_bytes
        elif len(self._pieces[0]) < MAX_INPUT_BYTES:
            self._pieces.append(piece)
        if self._over:
            self._pieces = [b"".join(self._pieces)[:MAX_INPUT_BYTES]]

    def take(self, newline: bool = False) -> Union[bytes, LineProblem]:
        """The line, with b"\\n" when it ended with one (or its LineProblem when over the limit:
        its head, and its length without the line end); starts the next one."""
        data, size, over = b"".join(self._pieces), self._size, self._over
        self._pieces, self._size, self._over = [], 0, False
        if over:
            return LineProblem(data, size, f"{size:,} bytes, over the reader's line limit of {self._max_bytes:,}")
        return data + b"\n" if newline else data


def bounded_lines(stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Union[bytes, LineProblem]]:
    """The stream's lines, each with its b"\n" (the last one may lack it), read in pieces: a line
    over max_bytes is a LineProblem holding its first MAX_INPUT_BYTES, never held whole; a
    compressed stream that breaks ends the lines with a LineProblem (size None)."""
    read = getattr(stream, "read_some", stream.read)
    line = _LinePieces(max_bytes)
    while True:
        try:
            piece = read(_PIECE)
        except _STREAM_ERRORS as e:
            partial = line.take()
            yield LineProblem(partial if isinstance(partial, bytes) else partial.head, None,
                              f"the compressed stream is unreadable from here on ({e})")
            return
        if not piece:
            break
        parts = piece.split(b"\n")
        if len(parts) > 1:
            line.add(parts[0])  # the end of the line the pieces before began
            yield line.take(newline=True)
            for part in parts[1:-1]:  # whole lines inside this piece: the common case, kept lean
                yield part + b"\n" if len(part) <= max_bytes else _one_line(part, max_bytes)
        line.add(parts[-1])
    last = line.take()
    if last:
        yield last


def _one_line(data: bytes, max_bytes: int) -> Union[bytes, LineProblem]:
    line = _LinePieces(max_bytes)
    line.add(data)
    return line.take(newline=True)


_NON_FINITE_LITERAL = re.compile(rb"NaN|Infinity")


def loads_json(data: Union[bytes, str]) -> Any:
    """A JSON value, as orjson reads it; text orjson refuses only for the NaN, Infinity and
    -Infinity literals (not JSON, but what JavaScript and Python's json write) is read by Python's
    json. Raises orjson.JSONDecodeError."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if not _NON_FINITE_LITERAL.search(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data):
            raise
        refused = e
    try:
        value = json.loads(data)
        orjson.dumps(value)  # nothing orjson itself refuses (lone surrogates, huge integers) gets in
        return value
    except (ValueError, RecursionError, TypeError, orjson.JSONEncodeError):
        raise refused from None


def format_of_path(path: str) -> str:
    """jsonl for .jsonl/.json/.ndjson, csv for .csv (either compressed too), else tfrecord."""
    return suffix_format(path) or TFRECORD


def suffix_format(path: str) -> Optional[str]:
    """The format the file's suffix names (.tfrecord/.tfrecords/.tfr, .jsonl/.json/.ndjson, .csv,
    compressed or not; .parquet), or None when it names none (such as TFX's 'data-00000-of-00004.gz')."""
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def iter_jsonl(lines: Iterable[Union[bytes, LineProblem]]) -> Iterator[Item]:
    for number, line in enumerate(lines, start=1):
        if isinstance(line, LineProblem):
            yield number, InstanceError("decode", f"line {number}: {line.reason}"), line.raw
            continue
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            value = loads_json(raw)
        except orjson.JSONDecodeError as e:
            yield number, InstanceError("decode", f"line {number}: not valid JSON ({e})"), raw
            continue
        if not isinstance(value, dict):
            yield number, InstanceError(
                "decode", f"line {number}: a JSON {type(value).__name__}, expected an object of fields"), raw
            continue
        yield number, value, raw


def cell_value(text: str, feature: Optional[Feature]) -> Any:
    """A CSV cell as the value the spec's feature expects; raises ConversionError.

    A feature with several values (a shape, or varlen) takes a JSON list, as JSON Lines does, and
    so may a numeric one-value feature ("[3]"); a string feature of shape [] keeps its text as is,
    unless the cell is {"b64": ...}: bytes that are not UTF-8, as JSON Lines writes them."""
    if text == "":
        return None
    if feature is None:
        return text
    if feature.encoding == RAW:
        return _json_or_fail(text, feature)
    if feature.dtype == "string" and _is_b64_object(text):
        return orjson.loads(text)
    values = _json_list_cell(text, feature)
    if values is not None:
        return values
    if feature.size > 1:
        raise ConversionError(f"{feature.size} values are needed as a JSON list, got {text!r}")
    if feature.dtype == "string":
        return text
    return _number_cell(text, feature)


def _is_b64_object(text: str) -> bool:
    """Whether a cell is exactly a JSON {"b64": "<text>"} object."""
    if not text.lstrip().startswith("{"):
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def _json_list_cell(text: str, feature: Feature) -> Optional[list]:
    """The cell's JSON list, or None when the cell is a single value. A numeric cell that starts
    with '[' must be a JSON list; a string cell is one only when it parses as one."""
    if feature.dtype == "string" and not (feature.shape or feature.varlen):
        return None
    if feature.dtype != "string" and not text.lstrip().startswith("["):
        return None
    try:
        values = loads_json(text)
    except orjson.JSONDecodeError:
        values = None
    if isinstance(values, list):
        return values
    if feature.dtype == "string":
        return None
    raise ConversionError(f"{text!r} is not a JSON list of numbers")


def _number_cell(text: str, feature: Feature) -> Any:
    """One float32 or int64 cell (int64 takes true/false, and integral floats such as "3.0")."""
    if feature.dtype == "float32":
        try:
            return float(text)
        except ValueError:
            raise ConversionError(f"{text!r} is not a number")
    lowered = text.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)  # "3.0" is 3; "3.5" fails in the conversion, with its reason
        except ValueError:
            raise ConversionError(f"{text!r} is not an integer")


def _json_or_fail(text: str, feature: Feature) -> Any:
    try:
        return loads_json(text)
    except orjson.JSONDecodeError:
        raise ConversionError(f"raw feature needs a JSON list of numbers or {{\"b64\": ...}}, got {text[:40]!r}")


def iter_csv(lines: Iterable[Union[bytes, LineProblem]], spec: Sequence[Feature]) -> Iterator[Item]:
    """Rows of a CSV file with a header; spec features are read by their dtype (cell_value). A
    row with bytes that are not UTF-8, a line over the limit or a row csv cannot parse is one
    decode dead letter, keyed by its own first line and holding its own bytes."""
    by_name = {f.name: f for f in spec}
    text = _RecordLines(lines)
    reader = csv.reader(text)
    header = yield from _csv_header(reader, text)
    if header is None:
        return
    while True:
        text.start_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield text.first, InstanceError("decode", f"line {text.first}: unreadable CSV ({e})"), text.raw
            continue
        if text.problem:
            yield text.first, InstanceError("decode", f"line {text.first}: {text.problem}"), text.raw
        elif cells:  # not a blank line
            yield _csv_row(text.first, header, cells, by_name)


def _csv_header(reader, text: "_RecordLines") -> Iterator[Item]:
    """Yields a line-1 error for a header that cannot be used; returns the header, or None."""
    text.start_record()
    try:
        header = next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        yield 1, InstanceError("decode", f"line 1: unreadable CSV header ({e})"), text.raw
        return None
    if text.problem:
        yield 1, InstanceError("decode", f"line 1: unreadable CSV header ({text.problem})"), text.raw
        return None
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        yield 1, InstanceError("decode", f"line 1: the header repeats columns {duplicates}"), text.raw
        return None
    return header


def _csv_row(start: int, header: Sequence[str], cells: Sequence[str], by_name: Dict[str, Feature]) -> Item:
    """One CSV row's item: its instance, or the decode / convert error naming every bad cell."""
    raw = _csv_line(cells)
    if len(cells) != len(header):
        return start, InstanceError(
            "decode", f"line {start}: {len(cells)} cells, the header has {len(header)}"), raw
    instance, problems = {}, []
    for name, cell in zip(header, cells):
        try:
            instance[name] = cell_value(cell, by_name.get(name))
        except ConversionError as e:
            problems.append(f"{name!r}: {e}")
    if problems:
        return start, InstanceError("convert", f"line {start}: " + "; ".join(problems), dict(zip(header, cells))), raw
    return start, instance, raw


def _csv_line(cells: Sequence[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue().encode("utf-8")


class _RecordLines:
    """A CSV file's byte lines as text for csv.reader, decoded one line at a time (so a line that
    is not UTF-8 spoils only the row it is in) and split at a lone \\r as csv expects, noting for
    the row being read its first line number, its bytes and the first problem of its lines (not
    UTF-8, over the line limit, an unreadable compressed stream). Line 1 may start with a UTF-8
    byte-order mark."""

    def __init__(self, lines: Iterable[Union[bytes, LineProblem]]):
        self._lines = iter(lines)
        self._pending: List[Tuple[str, Union[bytes, InputHead], Optional[str]]] = []
        self._number = 0
        self.start_record()

    def start_record(self) -> None:
        self.first = self._number + 1
        self._raw: List[Union[bytes, InputHead]] = []
        self.problem: Optional[str] = None

    @property
    def raw(self) -> Union[bytes, InputHead]:
        """The row's bytes, without the final line end (a line over the limit: its head)."""
        if len(self._raw) == 1 and isinstance(self._raw[0], InputHead):
            return self._raw[0]
        return b"".join(r.head if isinstance(r, InputHead) else r for r in self._raw).rstrip(b"\r\n")

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self._pending:
            self._pending = _decoded_line(next(self._lines), self._number == 0)
        text, raw, problem = self._pending.pop(0)
        self._number += 1
        self._raw.append(raw)
        if problem and self.problem is None:
            self.problem = problem if self._number == self.first else f"{problem}, in its line {self._number}"
        return text


def _decoded_line(line: Union[bytes, LineProblem], first: bool) -> List[Tuple[str, Union[bytes, InputHead], Optional[str]]]:
    """(text, bytes, problem or None) of each line csv sees in one line of bytes: the line, or its
    parts where it holds a lone \\r (csv, as a file opened with newline="", ends lines there)."""
    if isinstance(line, LineProblem):
        return [("\n", line.raw, line.reason)]
    try:
        text, problem = line.decode("utf-8-sig" if first else "utf-8"), None
    except UnicodeDecodeError as e:
        text, problem = line.decode("utf-8", "surrogateescape"), f"not UTF-8 ({e})"
    if "\r" not in text or "\r" not in text.rstrip("\r\n"):
        return [(text, line, problem)]
    parts = list(io.StringIO(text, newline=""))
    return [(part, part.encode("utf-8", "surrogateescape"), problem and _undecodable(part)) for part in parts]


def _undecodable(text: str) -> Optional[str]:
    """"not UTF-8" for text holding bytes decoded as surrogate escapes, else None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return f"not UTF-8 ({e})"
