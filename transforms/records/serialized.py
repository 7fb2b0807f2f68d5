"""SerializedRecords: a chunk's serialized tf.Examples and, built once, their one string tensor.

The TFRecord reader hands each chunk over as SerializedRecords. The key feature's parse and every
model call of the chunk take its tensor (string_tensor), which is built from the list the first
time one of them asks, so a chunk is converted once however many steps read it, on whichever
thread. Whatever needs records one by one (a failing chunk's isolation, dead letters,
passthrough features, PredictionLogs) indexes the list as it is.

Pickled (between fused stages, to other workers) as the list of bytes.
"""

from typing import Iterator, List, Sequence, Union

import numpy as np


class SerializedRecords(Sequence):
    """Sequence[bytes] over a list of records, with their tf.string tensor and their byte lengths
    computed once when first asked for."""

    __slots__ = ("_list", "_tensor", "_lengths")

    def __init__(self, records: List[bytes]):
        self._list, self._tensor, self._lengths = records, None, None

    def tensor(self):
        """The records as one tf.string tensor of shape [n]."""
        if self._tensor is None:
            import tensorflow as tf

            self._tensor = tf.constant(self._list, tf.string)
        return self._tensor

    def byte_lengths(self) -> np.ndarray:
        """Each record's size in bytes."""
        if self._lengths is None:
            self._lengths = np.fromiter(map(len, self._list), dtype=np.int64, count=len(self._list))
        return self._lengths

    def sliced(self, start: int, stop: int) -> "SerializedRecords":
        return SerializedRecords(self._list[start:stop])

    def __len__(self) -> int:
        return len(self._list)

    def __getitem__(self, i):
        return self._list[i]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._list)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and self._list == list(other)

    def __repr__(self) -> str:
        return f"SerializedRecords({len(self)} records)"

    def __reduce__(self):
        return SerializedRecords, (self._list,)


def string_tensor(records: Union[SerializedRecords, Sequence[bytes]]):
    """A tf.string tensor of the records: the chunk's own when it has one (SerializedRecords,
    ColumnRecords)."""
    tensor = getattr(records, "tensor", None)
    if tensor is not None:
        return tensor()
    import tensorflow as tf

    return tf.constant(list(records), tf.string)


def byte_lengths(records: Union[SerializedRecords, Sequence[bytes]]) -> np.ndarray:
    lengths = getattr(records, "byte_lengths", None)
    if lengths is not None:
        return lengths()
    return np.fromiter(map(len, records), dtype=np.int64, count=len(records))
