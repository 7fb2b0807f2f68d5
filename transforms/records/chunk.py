"""The pipeline's element types: a chunk of keyed records, and what scoring made of it. Pure.

A chunk (up to --max_batch_size records) is the pipeline element, so Beam's per-element cost is
paid once per chunk. Keys, records and sources are parallel: position i of each is one record.
"""

from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# An engine built with keep_logs returns its PredictionLogs under this name, as one more output
# column ([n] objects), so they travel through isolation and concatenation with the other
# outputs. Rows never show it; only the PredictionLog sink reads it.
from models.serving.prediction_log import PREDICTION_LOG  # noqa: F401  (re-exported)
from transforms.records.serialized import byte_lengths


DEFAULT_CHUNK_SIZE = 1024  # records per chunk (--max_batch_size)
# Serialized input bytes per chunk (--max_batch_bytes): small records fill 1024-record chunks; a
# 64x64x3 CNN on raw images gets ~170 a batch (2 cores: 1,950-2,010 img/s, against 1,710-1,750 at
# 512 KiB's 40).
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024
# For models that decode images inside their signature (JPEG or PNG bytes in), whose input grows
# tenfold and more once decoded, and which are no faster in larger batches on CPU (ResNet50 at
# 224x224: 22 img/s at 29 or 112 images a batch, 1.5 against 2.4 GB peak RSS).
DECODED_IMAGE_CHUNK_BYTES = 512 * 1024


class _Consecutive(Sequence):
    """Something about `count` consecutive records of one file from record index `first`, built
    per record only when asked for (most chunks never need it)."""

    def __init__(self, file: str, first: int, count: int):
        self.file, self.first, self.count = file, first, count

    def _item(self, index: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return self._item(self.first + (i % self.count))

    def __eq__(self, other):
        return list(self) == list(other)

    def __reduce__(self):
        return type(self), (self.file, self.first, self.count)


class FileRecords(_Consecutive):
    """The sources of the records: {"file", "record"} dicts."""

    def _item(self, index: int):
        return {"file": self.file, "record": index}


class FilePositions(_Consecutive):
    """The sources of records counted by another position: {"file", field} dicts (field "row")."""

    def __init__(self, file: str, first: int, count: int, field: str):
        super().__init__(file, first, count)
        self.field = field

    def _item(self, index: int):
        return {"file": self.file, self.field: index}

    def __reduce__(self):
        return type(self), (self.file, self.first, self.count, self.field)


class PositionKeys(_Consecutive):
    """The position keys of the records: '<file>:<index>' (file: the name keys use). A job that
    reads a key feature never builds them."""

    def _item(self, index: int):
        return f"{self.file}:{index}"


class RecordChunk(NamedTuple):
    keys: Sequence[str]
    # serialized tf.Examples: a list, SerializedRecords (one string tensor) or ColumnRecords (rows
    # read as columns, their arrays cut, their tf.Examples built when asked for)
    records: Sequence[bytes]
    # where each record came from: {"file", "record"}, {"file", "line"}, {"table"} or {"query"},
    # {"message_id"}; None when the caller does not know (records handed in as (key, bytes))
    sources: Optional[Sequence[Mapping[str, Any]]] = None

    def source(self, i: int) -> Optional[Mapping[str, Any]]:
        return None if self.sources is None else dict(self.sources[i])


class ChunkBuilder:
    """Gathers keyed records, one at a time, into RecordChunks of at most size records and
    max_bytes of serialized input (a source's reading loop: add each record, yield what it gives)."""

    def __init__(self, size: int = DEFAULT_CHUNK_SIZE, max_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self._start()

    def _start(self) -> None:
        self._keys: List[str] = []
        self._records: List[bytes] = []
        self._sources: List[Mapping[str, Any]] = []
        self._bytes = 0

    def add(self, key: str, record: bytes, source: Mapping[str, Any]) -> List[RecordChunk]:
        """Adds one record; returns the chunk it filled, if it filled one (yield from it)."""
        self._keys.append(key)
        self._records.append(record)
        self._sources.append(source)
        self._bytes += len(record)
        if len(self._keys) >= self.size or (self.max_bytes and self._bytes >= self.max_bytes):
            return self.rest()
        return []

    def rest(self) -> List[RecordChunk]:
        """The chunk of the records added since the last one, if there are any."""
        if not self._keys:
            return []
        chunk = RecordChunk(self._keys, self._records, self._sources)
        self._start()
        return [chunk]


class ModelResult(NamedTuple):
    indices: List[int]  # chunk positions this model scored, ascending
    outputs: Dict[str, np.ndarray]  # each [len(indices), ...]


class ScoredChunk(NamedTuple):
    keys: List[str]  # final key per chunk position (the key feature's value when one is read)
    records: Sequence[bytes]
    models: Dict[str, ModelResult]  # in graph order; a model that scored nothing is absent
    dead: List[Dict[str, Any]]  # dead-letter rows of this chunk (transforms.records.dead_letters)
    sources: Optional[Sequence[Mapping[str, Any]]] = None
    versions: Optional[Dict[str, str]] = None  # {model: version} where models are refreshed (streams)

    def row_positions(self) -> List[int]:
        """Chunk positions with at least one model's outputs (one prediction row each)."""
        return covered_positions(self.models, len(self.keys))


def covered_positions(models: Mapping[str, ModelResult], count: int) -> List[int]:
    everyone = list(range(count))
    if models and all(result.indices == everyone for result in models.values()):
        return everyone  # the common case: every model scored every record
    return sorted({i for result in models.values() for i in result.indices})


# A slice the byte cap cuts holds a multiple of this many records (when it holds more): a model
# then sees few distinct batch sizes, and each new one costs a round of kernel selection and
# caching in oneDNN (CPU) and cuDNN's autotuning (GPU).
BATCH_QUANTUM = 8


def split_by_bytes(records: Sequence[bytes], max_bytes: int) -> Iterator[Tuple[int, Sequence[bytes]]]:
    """Consecutive (offset, records) slices of at most max_bytes each (at least one record), each
    a multiple of BATCH_QUANTUM records where the cap cuts more than that. A SerializedRecords or
    ColumnRecords chunk is cut into its own kind (sliced)."""
    lengths = byte_lengths(records)
    if int(lengths.sum()) <= max_bytes:
        yield 0, records
        return
    cut = getattr(records, "sliced", None) or (lambda a, b: records[a:b])
    start = total = 0
    for i, size in enumerate(lengths.tolist()):
        if i > start and total + size > max_bytes:
            count = i - start
            stop = start + (count - count % BATCH_QUANTUM if count > BATCH_QUANTUM else count)
            yield start, cut(start, stop)
            start, total = stop, int(lengths[stop:i].sum())  # the records past the cut start the next
        total += size
    yield start, cut(start, len(lengths))
