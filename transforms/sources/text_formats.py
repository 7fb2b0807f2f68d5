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
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import orjson

from models.serving.feature_spec import RAW, Feature
from transforms.sources.instances import ConversionError

JSONL, CSV, TFRECORD = "jsonl", "csv", "tfrecord"
INPUT_FORMATS = (TFRECORD, JSONL, CSV)
_SUFFIXES = {".jsonl": JSONL, ".json": JSONL, ".ndjson": JSONL, ".csv": CSV,
             ".tfrecord": TFRECORD, ".tfrecords": TFRECORD, ".tfr": TFRECORD}
_COMPRESSION = (".gz", ".gzip", ".bz2", ".deflate", ".zst", ".zstd")
_TRUE, _FALSE = ("true", "t", "yes"), ("false", "f", "no")


class InstanceError(ValueError):
    """A line that is not an instance (stage decode) or whose values cannot be read (stage convert)."""

    def __init__(self, stage: str, message: str, fields: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.stage = stage
        self.fields = fields or {}  # what could be read of the line (a CSV row's cells)


Item = Tuple[int, Union[Dict[str, Any], InstanceError], bytes]


def format_of_path(path: str) -> str:
    """jsonl for .jsonl/.json/.ndjson, csv for .csv (either compressed too), else tfrecord."""
    return suffix_format(path) or TFRECORD


def suffix_format(path: str) -> Optional[str]:
    """The format the file's suffix names (.tfrecord/.tfrecords/.tfr, .jsonl/.json/.ndjson, .csv,
    compressed or not), or None when it names none (such as TFX's 'data-00000-of-00004.gz')."""
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def iter_jsonl(lines: Iterable[bytes]) -> Iterator[Item]:
    for number, line in enumerate(lines, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
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
        values = orjson.loads(text)
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
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConversionError(f"raw feature needs a JSON list of numbers or {{\"b64\": ...}}, got {text[:40]!r}")


def iter_csv(lines: Iterable[bytes], spec: Sequence[Feature]) -> Iterator[Item]:
    """Rows of a CSV file with a header; spec features are read by their dtype (cell_value)."""
    by_name = {f.name: f for f in spec}
    # utf-8-sig: the byte-order mark spreadsheet exports put before the header is not part of it
    text = io.TextIOWrapper(_LineStream(lines), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    header = yield from _csv_header(reader)
    if header is None:
        return
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            yield start, InstanceError("decode", f"line {start}: unreadable CSV ({e})"), b""
            continue
        if cells:  # not a blank line
            yield _csv_row(start, header, cells, by_name)


def _csv_header(reader) -> Iterator[Item]:
    """Yields a line-1 error for a header that cannot be used; returns the header, or None."""
    try:
        header = next(reader)
    except StopIteration:
        return None
    except (csv.Error, UnicodeDecodeError) as e:
        yield 1, InstanceError("decode", f"line 1: unreadable CSV header ({e})"), b""
        return None
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        yield 1, InstanceError("decode", f"line 1: the header repeats columns {duplicates}"), b""
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


class _LineStream(io.RawIOBase):
    """A readable byte stream over an iterable of byte lines (for csv through TextIOWrapper)."""

    def __init__(self, lines: Iterable[bytes]):
        self._lines = iter(lines)
        self._buffer = b""

    def readable(self):
        return True

    def readinto(self, target):
        while not self._buffer:
            try:
                self._buffer = next(self._lines)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n
