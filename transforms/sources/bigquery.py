"""ReadKeyedBigQueryRows: a BigQuery table or query -> keyed tf.Example records + dead letters.

Rows are read with Beam's ReadFromBigQuery (DIRECT_READ, the Storage Read API, by default; or
EXPORT through GCS) and converted by the model's feature spec with the same rules as JSON/CSV
instances (transforms.sources.instances):

- INT64 and BOOL -> int64; FLOAT64 and NUMERIC -> float (or int64 when whole); STRING and
  BYTES -> bytes; REPEATED -> lists.
- NULL, and an empty REPEATED value (BigQuery stores a NULL array as an empty one) -> a missing
  feature: the spec's default, or a convert dead letter.
- DATE, DATETIME, TIMESTAMP -> ISO 8601 text for string features, seconds since the epoch (UTC)
  for numeric ones (DIRECT_READ gives DATETIME as text, EXPORT as a datetime: both work).

The key column gives each record's key and is not a feature. A row that cannot be converted is
a dead letter, never a crash.
"""

import base64
import dataclasses
import datetime
import decimal
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import orjson

from transforms.records.chunk import DEFAULT_CHUNK_SIZE, RecordChunk, split_by_bytes
from transforms.records.columns import ColumnRecords
from transforms.records.dead_letters import CONVERT, DEAD_LETTER_TAG, WithDeadLetters, dead_letter
from transforms.runtime.accounting import AccountedDoFn
from transforms.sources.columnar import clean_instances
from transforms.sources.instances import as_conversion_error
from transforms.sources.text import InstanceOptions

DIRECT_READ, EXPORT = "DIRECT_READ", "EXPORT"
READ_METHODS = (DIRECT_READ, EXPORT)


@dataclasses.dataclass(frozen=True)
class BigQueryInput:
    """Where rows come from: a table ('project:dataset.table' or 'dataset.table') or a query."""

    table: Optional[str] = None
    query: Optional[str] = None
    method: str = DIRECT_READ
    project: Optional[str] = None  # billing project for query jobs and exports
    gcs_location: Optional[str] = None  # EXPORT's temporary files (default: --temp_location)

    def __post_init__(self):
        if bool(self.table) == bool(self.query):
            raise ValueError("give a table or a query, not both")
        if self.method not in READ_METHODS:
            raise ValueError(f"read method {self.method!r} is not one of {', '.join(READ_METHODS)}")

    @property
    def source(self) -> Dict[str, str]:
        """What --with_source writes for rows from here."""
        return {"table": self.table} if self.table else {"query": self.query}

    def describe(self) -> str:
        return f"table {self.table}" if self.table else f"query {self.query}"


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return str(value)


def row_bytes(row: Dict[str, Any]) -> bytes:
    """The row as JSON, the raw input of its dead letter (BYTES as {"b64"}, dates as ISO text)."""
    return orjson.dumps(row, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def row_to_record(row: Dict[str, Any], options: InstanceOptions) -> Tuple[str, bytes]:
    """(key, serialized tf.Example) of one row; raises ConversionError naming the problem.

    An empty REPEATED value counts as NULL: BigQuery stores a NULL array as an empty one.
    """
    row = {name: (None if value == [] else value) for name, value in row.items()}
    return options.key_of(row), options.convert(row)


class RowsToRecordsFn(AccountedDoFn):
    """Lists of rows -> a RecordChunk each (records sourced {"table"} or {"query"}) + dead letters."""

    def __init__(self, options: InstanceOptions, source: Dict[str, str], chunk_bytes: Optional[int] = None):
        self._options = options
        self._source = source
        self._chunk_bytes = chunk_bytes


    def process(self, rows: List[Dict[str, Any]]):
        self._accounting.read(len(rows))
        clean = clean_instances(rows, self._options) if self._options.bulk_arrays and self._options.key_field else None
        if clean is not None:  # the feature arrays cut in bulk; tf.Examples only if something asks
            keys, arrays = clean
            self._accounting.read_as_arrays(len(rows))
            yield from self._chunks(keys, ColumnRecords(list(rows), self._options, arrays))
            return
        keys, records = [], []
        for row in rows:
            try:
                key, record = row_to_record(row, self._options)
            except Exception as e:  # pylint: disable=broad-except  # no row may stop the others
                dead = dead_letter(CONVERT, as_conversion_error(e), key=self._options.key_or_none(row),
                                   raw=row_bytes(row), source=self._source)
                yield from self.reject([dead])
                continue
            keys.append(key)
            records.append(record)
        yield from self._chunks(keys, records)

    def _chunks(self, keys, records):
        for offset, part in split_by_bytes(records, self._chunk_bytes) if self._chunk_bytes else [(0, records)]:
            if len(part):
                yield RecordChunk(keys[offset:offset + len(part)], part, [self._source] * len(part))


class ReadKeyedBigQueryRows(beam.PTransform):
    """Reads a BigQuery table or query as RecordChunks: WithDeadLetters(chunks, dead letters).

    columns: the columns to read (the key, the features, passthrough ones); DIRECT_READ on a table
    reads only those. Rows are batched into chunks of up to chunk_size records, split further so a
    chunk holds at most chunk_bytes of serialized examples (a larger record is a chunk of its own).
    """

    def __init__(self, source: BigQueryInput, options: InstanceOptions, columns: Tuple[str, ...],
                 chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_bytes: Optional[int] = None):
        super().__init__()
        self._input = source
        self._options = options
        self._columns = tuple(columns)
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes

    def _read(self):
        kwargs = {"method": self._input.method, "project": self._input.project}
        if self._input.gcs_location:
            kwargs["gcs_location"] = self._input.gcs_location
        if self._input.table:
            if self._input.method == DIRECT_READ:
                kwargs["selected_fields"] = list(self._columns)
            return beam.io.ReadFromBigQuery(table=self._input.table, **kwargs)
        return beam.io.ReadFromBigQuery(query=self._input.query, use_standard_sql=True, **kwargs)

    def expand(self, pbegin):
        result = (pbegin
                  | "ReadFromBigQuery" >> self._read()
                  | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._chunk_size)
                  | "RowsToExamples" >> beam.ParDo(RowsToRecordsFn(self._options, self._input.source, self._chunk_bytes)
                                                   ).with_outputs(DEAD_LETTER_TAG, main="records"))
        return WithDeadLetters(result.records, result[DEAD_LETTER_TAG])
