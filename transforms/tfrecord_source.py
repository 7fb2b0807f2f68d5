"""ReadKeyedTFRecords: TFRecord files of tf.Example -> (key, serialized bytes) + dead letters.

Keys are deterministic: '<file>:<record index>', with <file> the base name when the matched base
names are unique and the full path otherwise. Files are the unit of parallelism (TFRecord has no
sync markers, so a file cannot be split by offset); a Reshuffle spreads them over workers.
"""

import gzip
import io
import os
from typing import Dict, Iterable, List, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.dead_letters import DEAD_LETTER_TAG, READ, dead_letter
from transforms.tfrecord_reader import Corruption, read_records

GZIP_SUFFIXES = (".gz", ".gzip")


class NoInputFilesError(ValueError):
    pass


def expand_patterns(patterns: Sequence[str]) -> List[str]:
    """Every file the patterns match, sorted and de-duplicated; raises when a pattern matches none."""
    paths = set()
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for an unreachable or malformed pattern
            raise NoInputFilesError(f"cannot list input {pattern!r}: {e}") from e
        files = [m.path for m in matched if m.size_in_bytes is None or not m.path.endswith("/")]
        if not files:
            raise NoInputFilesError(f"input pattern {pattern!r} matches no files")
        paths.update(files)
    return sorted(paths)


def key_names(paths: Sequence[str]) -> Dict[str, str]:
    """Short, unique, deterministic names for key prefixes."""
    bases = [os.path.basename(p) for p in paths]
    if len(set(bases)) == len(bases):
        return dict(zip(paths, bases))
    return {p: p for p in paths}


def is_gzip(path: str) -> bool:
    return path.lower().endswith(GZIP_SUFFIXES)


def open_records_stream(path: str):
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    if is_gzip(path):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20)
    return raw


class ReadRecordsFn(beam.DoFn):
    """(path, key name) -> (key, bytes) per record; a dead letter per corrupt region."""

    def __init__(self):
        self._read = metrics.counter(metrics.RECORDS_READ)
        self._dead = metrics.dead_letter_counter(READ)

    def process(self, element):
        path, name = element
        with open_records_stream(path) as stream:
            for item in read_records(stream):
                key = f"{name}:{item.index}"
                if isinstance(item, Corruption):
                    self._dead.inc()
                    detail = "" if not item.fatal else "; the rest of the file is unreadable"
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                        READ, f"{path} at byte {item.offset}: {item.reason}{detail}",
                        key=key, raw=item.data, source=f"{path}@{item.offset}"))
                    continue
                self._read.inc()
                metrics.PROGRESS.add(metrics.RECORDS_READ)
                yield key, item.data


class ReadKeyedTFRecords(beam.PTransform):
    """Reads TFRecord files matching the patterns (gzip by extension) as keyed records.

    Returns (records, dead_letters). The patterns are expanded at construction so an empty glob
    fails before the pipeline starts.
    """

    def __init__(self, patterns: Iterable[str]):
        super().__init__()
        self._paths = expand_patterns(list(patterns))

    @property
    def paths(self) -> List[str]:
        return list(self._paths)

    def expand(self, pbegin):
        names = key_names(self._paths)
        result = (
            pbegin
            | "Files" >> beam.Create([(p, names[p]) for p in self._paths])
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadRecords" >> beam.ParDo(ReadRecordsFn()).with_outputs(DEAD_LETTER_TAG, main="records"))
        return result.records, result[DEAD_LETTER_TAG]
