"""ReadKeyedParquet: Parquet files -> keyed tf.Example records + dead letters.

Each row is one instance, a dict of the Python values pyarrow gives (lists for list and
fixed-size-list columns, nested for lists of lists; bytes for binary columns; datetime and date
for timestamps and dates; Decimal; None for a null), converted exactly as a JSON Lines object is
(InstanceOptions.convert, transforms.sources.instances). Keys come from the key column, else are
'<file>:<row>'; every record and dead letter is sourced {"file", "row"}, rows counted from 0 in the
file. A file is read one row group at a time, ROWS_PER_BATCH rows at a time within it, never whole.

A row whose values do not fit is a convert dead letter holding the row as JSON. A file that is not
Parquet (or whose footer is cut off) is one read dead letter; so is a row group that cannot be read
(naming its rows), and the file's other row groups are still read.

Files are split by row group: after matching, each file's footer is read (file_read_units) and the
file becomes read units of consecutive row groups holding at least ROWS_PER_UNIT rows each, the
last the rest (a file with fewer rows, or one large row group, is one unit), spread over the
workers and each read on its own, so one large file is read by several workers. A unit carries
its first row's index in the file, so keys and sources are the same however the file is split. A
file whose footer cannot be read is one unit, whose reading gives its read dead letter. Beam's
parquetio splits by row group too, but says neither which file nor which row a record came from
and fails the job on a corrupt file.
"""

import base64
import datetime
import decimal
import json
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records.chunk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE, PositionKeys
from transforms.records.columns import ColumnRecords
from transforms.records.dead_letters import CONVERT, READ, dead_letter
from transforms.sources.columnar import clean_block
from transforms.sources.files import KeyedBlock, ReadKeyedFileFn, check_local_patterns, read_files
from transforms.sources.instances import ConversionError, as_conversion_error
from transforms.sources.text import InstanceOptions

ROWS_PER_BATCH = 1024
# Rows a read unit holds at least (or its one row group, if larger): enough that a unit's cost
# (a task, and its footer read again) is small beside its rows', few enough to spread a large file.
ROWS_PER_UNIT = 64 * 1024


class UnreadableRows(NamedTuple):
    """Rows that cannot be read: count of them from this row on (None: the whole file, whose row
    count is not known), and why."""

    count: Optional[int]
    reason: str


Item = Tuple[int, Union[dict, ConversionError, UnreadableRows, "CleanRows"]]


class CleanRows(NamedTuple):
    """A record batch whose every row converts cleanly (transforms.sources.columnar.clean_block):
    the rows, their keys (None: position keys) and the spec's feature arrays."""

    batch: object  # pyarrow.RecordBatch
    keys: Optional[List[str]]
    arrays: Dict[str, np.ndarray]


class ReadUnit(NamedTuple):
    """Consecutive row groups of one file, read as one element: group_count of them from
    first_group (None: every row group, for a file whose footer could not be read when it was
    split), the first of them starting at row first_row of the file."""

    path: str
    name: str  # the file's key name
    first_group: int
    group_count: Optional[int]
    first_row: int


def read_units(path: str, name: str, group_rows: Sequence[int], unit_rows: int = ROWS_PER_UNIT) -> List[ReadUnit]:
    """The file's row groups (their row counts, from its footer) in consecutive runs of at least
    unit_rows rows, the last run holding the rest; none for a file without row groups."""
    units: List[ReadUnit] = []
    first, rows, first_row = 0, 0, 0
    for group, count in enumerate(group_rows):
        rows += count
        if rows >= unit_rows or group == len(group_rows) - 1:
            units.append(ReadUnit(path, name, first, group + 1 - first, first_row))
            first, first_row, rows = group + 1, first_row + rows, 0
    return units


def file_read_units(element: Tuple[str, str], unit_rows: int = ROWS_PER_UNIT) -> List[ReadUnit]:
    """(path, key name) -> the file's read units, from its footer; one unit of the whole file
    when the footer cannot be read (the reader then gives its read dead letter). Never raises."""
    import pyarrow.parquet as pq

    path, name = element
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            metadata = pq.ParquetFile(f).metadata
            group_rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    except Exception:  # pylint: disable=broad-except  # not Parquet, cut off, gone: the reader says which
        return [ReadUnit(path, name, 0, None, 0)]
    return read_units(path, name, group_rows, unit_rows)


class SplitParquetFiles(beam.PTransform):
    """(path, key name) per file -> its ReadUnits, spread over the workers."""

    def __init__(self, unit_rows: int = ROWS_PER_UNIT):
        super().__init__()
        self._unit_rows = unit_rows

    def expand(self, files):
        return (files
                | "ReadUnits" >> beam.FlatMap(file_read_units, self._unit_rows)
                | "SpreadUnits" >> beam.Reshuffle())


def iter_parquet_rows(path: str, batch_rows: int = ROWS_PER_BATCH, options: Optional[InstanceOptions] = None,
                      row_groups: Optional[range] = None, first_row: int = 0) -> Iterator[Item]:
    """(row, instance) per row of a Parquet file, or of its row_groups (a range of group indexes,
    the first starting at row first_row of the file); (row, ConversionError) for a row whose values
    have no Python form (a timestamp past year 9999); (row, UnreadableRows) for a file or row group
    that cannot be read. With options, a batch of rows that all convert cleanly by them comes as
    one (first row, CleanRows) instead. Never raises for the file's contents."""
    try:
        f = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as e:  # pylint: disable=broad-except  # gone or unreadable: its one dead letter
        yield first_row, UnreadableRows(None, f"{path}: cannot be opened ({type(e).__name__}: {e})")
        return
    with f:
        yield from _file_rows(path, f, batch_rows, options, row_groups, first_row)


def _file_rows(path: str, f, batch_rows: int, options: Optional[InstanceOptions], row_groups: Optional[range] = None,
               first_row: int = 0) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
        groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    except Exception as e:  # pylint: disable=broad-except  # not Parquet, or its footer is cut off
        yield first_row, UnreadableRows(None, f"{path}: not a readable Parquet file ({type(e).__name__}: {e})")
        return
    if row_groups is None:
        row_groups = range(len(groups))
    elif row_groups.stop > len(groups) or sum(groups[:row_groups.start]) != first_row:
        # rewritten since it was split into read units: these rows are no longer where they were
        yield first_row, UnreadableRows(None, f"{path}: its row groups changed after it was split into read units "
                                              f"(row groups {row_groups.start}..{row_groups.stop - 1} from row "
                                              f"{first_row}; it has {len(groups)})")
        return
    start = first_row
    for group in row_groups:
        rows = groups[group]
        row = start
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], use_threads=False):
                clean = None if options is None else clean_block(batch, options)
                if clean is not None:
                    yield row, CleanRows(batch, *clean)
                    row += batch.num_rows
                    continue
                for item in _batch_rows(batch):
                    yield row, item
                    row += 1
        except Exception as e:  # pylint: disable=broad-except  # a corrupt page or column chunk
            last = start + rows - 1
            yield row, UnreadableRows(start + rows - row, f"{path}: row group {group} cannot be read from row "
                                                          f"{row} (rows {row}..{last}) ({type(e).__name__}: {e})")
        start += rows


def _batch_rows(batch) -> List[Union[dict, ConversionError]]:
    """The batch's rows as dicts; where one row has no Python form, each row on its own."""
    try:
        return batch.to_pylist()
    except Exception:  # pylint: disable=broad-except  # one bad value fails the whole batch's conversion
        pass
    rows: List[Union[dict, ConversionError]] = []
    for i in range(batch.num_rows):
        try:
            rows.extend(batch.slice(i, 1).to_pylist())
        except Exception as e:  # pylint: disable=broad-except
            rows.append(ConversionError(f"a value has no Python form ({type(e).__name__}: {e})"))
    return rows


def _json_value(value):
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return repr(value)


def row_json(instance) -> bytes:
    """The row as a JSON object (binary values as {"b64": ...}, dates and times as ISO 8601 text),
    what a dead letter holds where the text formats hold the line."""
    try:
        return json.dumps(instance, default=_json_value, ensure_ascii=False).encode("utf-8")
    except Exception:  # pylint: disable=broad-except  # the dead letter must still be written
        return repr(instance).encode("utf-8")


def keyed_row(path: str, name: str, row: int, item, options: InstanceOptions) -> Tuple[str, object]:
    """(key, serialized example or a dead-letter row) of one row (or its error) of a file."""
    if isinstance(item, UnreadableRows):
        what = "the file" if item.count is None else f"{item.count} row(s)"
        return f"{name}:{row}", dead_letter(READ, f"{item.reason}; {what} cannot be read", key=f"{name}:{row}",
                                            source={"file": path, "row": row, "rows_skipped": item.count})
    instance = item if isinstance(item, dict) else {}
    key = options.key_or_none(instance) or f"{name}:{row}"
    source = {"file": path, "row": row}
    try:
        if isinstance(item, ConversionError):
            raise item
        return key, options.convert(instance)
    except Exception as e:  # pylint: disable=broad-except  # no row may stop the file's others
        return key, dead_letter(CONVERT, as_conversion_error(e, f"row {row}: "), key=key,
                                raw=row_json(instance) if instance else None, source=source)


def keyed_rows(path: str, name: str, options: InstanceOptions, batch_rows: int = ROWS_PER_BATCH,
               row_groups: Optional[range] = None, first_row: int = 0
               ) -> Iterator[Union[Tuple[int, str, object], KeyedBlock]]:
    """(row, key, serialized example or a dead-letter row) per row of a file (or of its row_groups,
    as iter_parquet_rows reads them), or a KeyedBlock of clean rows (ColumnRecords); a read dead
    letter stands for the rows it could not read (its source's rows_skipped)."""
    for row, item in iter_parquet_rows(path, batch_rows, options if options.bulk_arrays else None, row_groups,
                                       first_row):
        if isinstance(item, CleanRows):
            keys = item.keys or PositionKeys(name, row, item.batch.num_rows)
            yield KeyedBlock(range(row, row + item.batch.num_rows), keys, ColumnRecords(item.batch, options, item.arrays))
            continue
        key, example = keyed_row(path, name, row, item, options)
        yield row, key, example


class ReadParquetFn(ReadKeyedFileFn):
    """ReadUnit -> RecordChunks, each record sourced {"file", "row"}; dead letters (read, convert)
    as above."""

    POSITION = "row"

    def __init__(self, options: InstanceOptions, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        super().__init__(chunk_size, chunk_bytes)
        self._options = options

    def keyed(self, element):
        path, name, first_group, group_count, first_row = element
        row_groups = None if group_count is None else range(first_group, first_group + group_count)
        return keyed_rows(path, name, self._options, self._chunk_size, row_groups, first_row)


class ReadKeyedParquet(beam.PTransform):
    """Reads Parquet files matching the patterns as keyed tf.Example records.

    Returns WithDeadLetters(RecordChunks, dead letters), chunks as ReadKeyedTFRecords gives them.
    Patterns are matched on the workers; a local pattern that matches nothing fails here, before
    the pipeline starts. Files are read in units of at least unit_rows rows (ROWS_PER_UNIT when
    not given; chunks never span two units).
    """

    def __init__(self, patterns: Sequence[str], options: InstanceOptions,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
                 unit_rows: Optional[int] = None):
        super().__init__()
        self._patterns = list(patterns)
        check_local_patterns(self._patterns)
        self._fn = ReadParquetFn(options, chunk_size, chunk_bytes)
        self._unit_rows = ROWS_PER_UNIT if unit_rows is None else unit_rows

    def expand(self, pbegin):
        return read_files(pbegin, self._patterns, "ReadParquet", self._fn, SplitParquetFiles(self._unit_rows))
