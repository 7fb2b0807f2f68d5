"""ReadKeyedInstances: JSON Lines or CSV files -> keyed tf.Example records + dead letters.

Each line (or CSV row) is one instance, converted by the model's feature spec
(transforms.sources.instances). Keys come from a key field, which is then removed from the features
(kept with keep_key, for outputs that echo the example: PredictionLogs, examples), or
are '<file>:<line>' (1-based line numbers, the header being line 1 of a CSV). A line that is not
an instance is a dead letter at stage decode; one whose values do not fit is one at stage convert;
both carry the line number and the line itself. Files are the unit of parallelism, as for TFRecord.
"""

import contextlib
import dataclasses
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from models.serving.feature_spec import Feature
from transforms.records.chunk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE
from transforms.records.columns import ColumnRecords
from transforms.records.dead_letters import CONVERT, dead_letter
from transforms.sources.columnar import clean_instances
from transforms.sources.files import KeyedBlock, ReadKeyedFileFn, check_local_patterns, read_files
from transforms.sources.instances import (ConversionError, as_conversion_error, instance_key, instance_to_example,
                                          select_fields)
from transforms.sources.gzip_recovering import GzipRecoveringReader
from transforms.sources.text_formats import CSV, JSONL, MAX_LINE_BYTES, InstanceError, bounded_lines, iter_csv, iter_jsonl
from transforms.sources.tfrecord import is_gzip


@dataclasses.dataclass(frozen=True)
class InstanceOptions:
    """How instances become examples: Vertex AI batch prediction's instance options."""

    spec: Tuple[Feature, ...]
    key_field: Optional[str] = None
    included_fields: Tuple[str, ...] = ()
    excluded_fields: Tuple[str, ...] = ()
    keep_extra: bool = True  # fields outside the spec stay in the example (for --passthrough)
    image_columns: Tuple[str, ...] = ()  # fields holding image paths or URIs, stored as the file's bytes
    keep_key: bool = False  # the key field stays in the example (outputs that echo it: PredictionLogs, examples)
    # clean runs of rows are handed over in bulk, their feature arrays cut (transforms.sources.columnar):
    # for signatures that take tensors, which are fed the arrays without a tf.Example per row
    bulk_arrays: bool = False

    def __post_init__(self):
        if self.included_fields and self.excluded_fields:
            raise ValueError("give included fields or excluded fields, not both")
        if self.keep_key and not self.keep_extra:
            raise ValueError("keep_key keeps the key field as an extra feature: it needs keep_extra")

    def key_of(self, instance: dict) -> str:
        """The key in the instance's key field; raises ConversionError when it has none."""
        return instance_key(instance, self.key_field)

    def key_or_none(self, instance: dict) -> Optional[str]:
        try:
            return self.key_of(instance) if self.key_field else None
        except Exception:  # pylint: disable=broad-except  # no usable key: the position keys it
            return None

    def convert(self, instance: dict) -> bytes:
        """The serialized tf.Example of an instance, without its key field unless keep_key (then
        whatever the included or excluded fields); raises ConversionError."""
        selected = instance
        if self.key_field:
            instance_key(instance, self.key_field)  # a record without a usable key is not scored
            selected = {k: v for k, v in instance.items() if k != self.key_field}
        selected = select_fields(selected, self.included_fields, self.excluded_fields)
        if self.key_field and self.keep_key:
            selected[self.key_field] = instance[self.key_field]
        return instance_to_example(selected, self.spec, self.keep_extra)


def read_image_columns(instance: dict, columns: Sequence[str], base_dir: str) -> dict:
    """The instance with each image column's path or URI replaced by the file's bytes (relative
    paths are read from base_dir, the input file's directory); raises ConversionError."""
    loaded = dict(instance)
    for column in columns:
        location = instance.get(column)
        if location is None:
            continue
        if not isinstance(location, str) or not location:
            raise ConversionError(f"image column {column!r} holds {location!r}, not a path or URI")
        path = location if FileSystems.get_scheme(location) or location.startswith("/") else \
            FileSystems.join(base_dir, location)
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                loaded[column] = f.read()
        except Exception as e:  # pylint: disable=broad-except  # missing or unreadable file
            raise ConversionError(f"image column {column!r}: cannot read {path}: {e}") from e
    return loaded


@contextlib.contextmanager
def open_text_stream(path: str):
    """The file's bytes, decompressed as its suffix says: gzip through GzipRecoveringReader, which
    inflates 16 KiB at a time (Beam's reader inflates 16 MiB of input at once, which a gzip bomb
    turns into 16 GB), other compressions by Beam."""
    if is_gzip(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            yield GzipRecoveringReader(raw)
    else:
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
            yield f


def iter_file_instances(path: str, fmt: str, spec: Sequence[Feature], max_line_bytes: int = MAX_LINE_BYTES):
    """(line, instance or InstanceError, raw line) for each instance of one file; lines over
    max_line_bytes are decode errors holding their head, never read whole."""
    with open_text_stream(path) as f:
        lines = bounded_lines(f, max_line_bytes)
        yield from (iter_jsonl(lines) if fmt == JSONL else iter_csv(lines, spec))


def keyed_examples(path: str, name: str, fmt: str, options: InstanceOptions
                   ) -> Iterator[Tuple[int, str, object, bytes]]:
    """(line, key, serialized example or a dead-letter row, raw line) per instance of a file."""
    for line, instance, raw in iter_file_instances(path, fmt, options.spec):
        key, example = keyed_example(path, name, line, instance, raw, options)
        yield line, key, example, raw


def keyed_example(path: str, name: str, line: int, instance, raw: bytes, options: InstanceOptions
                  ) -> Tuple[str, object]:
    """(key, serialized example or a dead-letter row) of one instance (or InstanceError) of a file."""
    fields = instance.fields if isinstance(instance, InstanceError) else instance
    key = options.key_or_none(fields) or f"{name}:{line}"  # its own key names its dead letter too
    source = {"file": path, "line": line}
    if isinstance(instance, InstanceError):
        # a CSV cell that does not fit is the same problem as a JSON value that does not
        error_type = ConversionError.__name__ if instance.stage == CONVERT else None
        return key, dead_letter(instance.stage, instance, key=key, raw=raw, source=source, error_type=error_type)
    try:
        if options.image_columns:
            instance = read_image_columns(instance, options.image_columns, FileSystems.split(path)[0])
        return key, options.convert(instance)
    except Exception as e:  # pylint: disable=broad-except  # no record may stop the file's others
        return key, dead_letter(CONVERT, as_conversion_error(e, f"line {line}: "), key=key, raw=raw, source=source)


def keyed_blocks(path: str, name: str, fmt: str, options: InstanceOptions, block_rows: int = DEFAULT_CHUNK_SIZE
                 ) -> Iterator[Union[Tuple[int, str, object], KeyedBlock]]:
    """What keyed_examples gives, in runs of up to block_rows instances: a run whose every
    instance converts cleanly (transforms.sources.columnar.clean_instances) is one KeyedBlock
    (ColumnRecords: the spec's arrays cut in bulk, tf.Examples built only when asked for); any
    other as (line, key, serialized example or a dead-letter row) per instance."""
    run: List[tuple] = []

    def flush():
        clean = clean_instances([instance for _, instance, _ in run], options) if run else None
        if clean is None:
            for line, instance, raw in run:
                yield (line, *keyed_example(path, name, line, instance, raw, options))
        else:
            keys, arrays = clean
            lines = [line for line, _, _ in run]
            instances = [instance for _, instance, _ in run]
            yield KeyedBlock(lines, keys or [f"{name}:{line}" for line in lines],
                             ColumnRecords(instances, options, arrays))
        run.clear()

    for item in iter_file_instances(path, fmt, options.spec):
        if isinstance(item[1], InstanceError):
            yield from flush()
            line, instance, raw = item
            yield (line, *keyed_example(path, name, line, instance, raw, options))
            continue
        run.append(item)
        if len(run) >= block_rows:
            yield from flush()
    yield from flush()


class ReadInstancesFn(ReadKeyedFileFn):
    """(path, key name) -> RecordChunks, each record sourced {"file", "line"}; dead letters
    (decode, convert) per bad instance."""

    POSITION = "line"

    def __init__(self, fmt: str, options: InstanceOptions, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        super().__init__(chunk_size, chunk_bytes)
        self._fmt = fmt
        self._options = options

    def keyed(self, element):
        path, name = element
        if not self._options.bulk_arrays:
            return ((line, key, example) for line, key, example, _ in
                    keyed_examples(path, name, self._fmt, self._options))
        return keyed_blocks(path, name, self._fmt, self._options, self._chunk_size)


class ReadKeyedInstances(beam.PTransform):
    """Reads JSON Lines or CSV files matching the patterns as keyed tf.Example records.

    Returns WithDeadLetters(RecordChunks, dead letters), chunks as ReadKeyedTFRecords gives them.
    Patterns are matched on the workers; a local pattern that matches nothing fails here, before
    the pipeline starts.
    """

    def __init__(self, patterns: Sequence[str], fmt: str, options: InstanceOptions,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        super().__init__()
        if fmt not in (JSONL, CSV):
            raise ValueError(f"instance format {fmt!r} is not {JSONL} or {CSV}")
        self._patterns = list(patterns)
        check_local_patterns(self._patterns)
        self._fn = ReadInstancesFn(fmt, options, chunk_size, chunk_bytes)

    def expand(self, pbegin):
        return read_files(pbegin, self._patterns, "ReadInstances", self._fn)
