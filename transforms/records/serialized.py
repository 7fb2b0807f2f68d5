"""SerializedRecords: a chunk's serialized tf.Examples held as one string tensor.

The TFRecord reader gets each chunk from tf.data as one tf.string tensor. The engines and the key
feature's parse take that tensor as it is, so on a clean chunk no record ever becomes a Python
bytes object. Whatever needs records one by one (a failing chunk's isolation, dead letters,
passthrough features, PredictionLogs) indexes the sequence, which builds the list once.

Pickled (between fused stages, to other workers) as the list of bytes.
"""

from typing import Iterator, List, Optional, Sequence, Union

import numpy as np


class SerializedRecords(Sequence):
    """Sequence[bytes] over a 1-D tf.string tensor, or over a list (then the tensor is built once
    when asked for)."""

    __slots__ = ("_tensor", "_list", "_lengths")

    def __init__(self, tensor=None, records: Optional[List[bytes]] = None):
        if (tensor is None) == (records is None):
            raise ValueError("give a tensor or a list of records")
        self._tensor, self._list, self._lengths = tensor, records, None

    def tensor(self):
        """The records as one tf.string tensor of shape [n]."""
        if self._tensor is None:
            import tensorflow as tf

            self._tensor = tf.constant(self._list, tf.string)
        return self._tensor

    def as_list(self) -> List[bytes]:
        if self._list is None:
            self._list = self._tensor.numpy().tolist()
        return self._list

    def byte_lengths(self) -> np.ndarray:
        """Each record's size in bytes, without building the list."""
        if self._lengths is None:
            if self._list is not None:
                self._lengths = np.fromiter(map(len, self._list), dtype=np.int64, count=len(self._list))
            else:
                import tensorflow as tf

                self._lengths = tf.strings.length(self._tensor).numpy().astype(np.int64)
        return self._lengths

    def sliced(self, start: int, stop: int) -> "SerializedRecords":
        if self._list is not None:
            return SerializedRecords(records=self._list[start:stop])
        return SerializedRecords(self._tensor[start:stop])

    def __len__(self) -> int:
        return len(self._list) if self._list is not None else int(self._tensor.shape[0])

    def __getitem__(self, i):
        return self.as_list()[i]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.as_list())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and self.as_list() == list(other)

    def __repr__(self) -> str:
        return f"SerializedRecords({len(self)} records)"

    def __reduce__(self):
        return _from_list, (self.as_list(),)


def _from_list(records: List[bytes]) -> SerializedRecords:
    return SerializedRecords(records=records)


def string_tensor(records: Union[SerializedRecords, Sequence[bytes]]):
    """A tf.string tensor of the records: the chunk's own when it has one."""
    if isinstance(records, SerializedRecords):
        return records.tensor()
    import tensorflow as tf

    return tf.constant(list(records), tf.string)


def byte_lengths(records: Union[SerializedRecords, Sequence[bytes]]) -> np.ndarray:
    if isinstance(records, SerializedRecords):
        return records.byte_lengths()
    return np.fromiter(map(len, records), dtype=np.int64, count=len(records))
