"""ReadKeyedTFRecords: TFRecord files of tf.Example -> (key, serialized bytes) + dead letters.

Keys are deterministic: '<file>:<record index>', with <file> the base name when the matched base
names are unique and the full path otherwise. Files are the unit of parallelism (TFRecord has no
sync markers, so a file cannot be split by offset); a Reshuffle spreads them over workers.
"""

import gzip
import io
import os
from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.dead_letters import DEAD_LETTER_TAG, READ, dead_letter
from transforms.record_chunks import RecordChunk
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


def corruption_dead_letter(path: str, key: str, item: Corruption):
    detail = "" if not item.fatal else "; the rest of the file is unreadable"
    return dead_letter(READ, f"{path} at byte {item.offset}: {item.reason}{detail}",
                       key=key, raw=item.data, source=f"{path}@{item.offset}")


class ReadRecordsFn(beam.DoFn):
    """(path, key name) -> (key, bytes) per record, or RecordChunks of up to chunk_size records.

    A corrupt region becomes one dead letter (stage read) and reading goes on where it can.
    """

    def __init__(self, chunk_size: Optional[int] = None):
        self._chunk_size = chunk_size

    def process(self, element):
        path, name = element
        keys, records = [], []
        with open_records_stream(path) as stream:
            for item in read_records(stream):
                key = f"{name}:{item.index}"
                if isinstance(item, Corruption):
                    metrics.dead_letter_counter(READ).inc()
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, corruption_dead_letter(path, key, item))
                elif self._chunk_size is None:
                    self._count(1)
                    yield key, item.data
                else:
                    keys.append(key)
                    records.append(item.data)
                    if len(records) >= self._chunk_size:
                        self._count(len(records))
                        yield RecordChunk(keys, records)
                        keys, records = [], []
        if records:
            self._count(len(records))
            yield RecordChunk(keys, records)

    @staticmethod
    def _count(n: int) -> None:
        metrics.counter(metrics.RECORDS_READ).inc(n)
        metrics.PROGRESS.add(metrics.RECORDS_READ, n)


class ReadKeyedTFRecords(beam.PTransform):
    """Reads TFRecord files matching the patterns (gzip by extension) as keyed records.

    Returns (records, dead_letters): records are (key, bytes), or RecordChunks with chunk_size. The patterns are expanded at construction so an empty glob
    fails before the pipeline starts.
    """

    def __init__(self, patterns: Iterable[str], chunk_size: Optional[int] = None):
        super().__init__()
        self._paths = expand_patterns(list(patterns))
        self._chunk_size = chunk_size

    @property
    def paths(self) -> List[str]:
        return list(self._paths)

    def expand(self, pbegin):
        names = key_names(self._paths)
        result = (
            pbegin
            | "Files" >> beam.Create([(p, names[p]) for p in self._paths])
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadRecords" >> beam.ParDo(ReadRecordsFn(self._chunk_size)).with_outputs(
                DEAD_LETTER_TAG, main="records"))
        return result.records, result[DEAD_LETTER_TAG]
