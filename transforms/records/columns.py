"""ColumnRecords: a chunk of rows read as columns (Parquet), its tf.Examples built only when asked for.

A columnar source hands a clean block of rows over as ColumnRecords with the arrays of the
model's features already cut from its columns (transforms.sources.columnar). A signature that
takes tensors is fed those arrays (models.serving.dense.TensorInputs.from_arrays): the rows reach
the model without a Python object or a tf.Example per row. Everything that needs the records
as tf.Examples (a tf.Example signature, tfx-bsl, passthrough columns, PredictionLogs of them, a
failing chunk's isolation, dead letters) reads them as any other chunk's: the rows are then
converted one by one with the rules every row-shaped source uses (InstanceOptions.convert), once,
and kept.

Pickled (to other workers) as the Arrow rows and the options; the arrays are cut again there.
"""

from typing import Iterator, List, Mapping, Optional, Sequence

import numpy as np


class ColumnRecords(Sequence):
    """Sequence[bytes] of the serialized tf.Examples of an Arrow record batch's rows, built on
    first use; feature_arrays(): {feature: [n, ...] array}, what parsing them would give."""

    __slots__ = ("_batch", "_options", "_arrays", "_list", "_tensor")

    def __init__(self, batch, options, arrays: Optional[Mapping[str, np.ndarray]] = None):
        self._batch, self._options = batch, options
        self._arrays, self._list, self._tensor = arrays, None, None

    def feature_arrays(self) -> Mapping[str, np.ndarray]:
        """{spec feature name: array of every row's values} (shape [n, *stored shape], the storage
        dtype: float32, int64, or bytes objects)."""
        if self._arrays is None:
            from transforms.sources.columnar import column_arrays

            self._arrays = column_arrays(self._batch, self._options)
            if self._arrays is None:  # cannot happen for a batch the source cut once
                raise ValueError("ColumnRecords: the rows no longer give feature arrays")
        return self._arrays

    def examples(self) -> List[bytes]:
        if self._list is None:
            self._list = [self._options.convert(row) for row in self._batch.to_pylist()]
        return self._list

    def tensor(self):
        """The records as one tf.string tensor of shape [n] (for a tf.Example signature)."""
        if self._tensor is None:
            import tensorflow as tf

            self._tensor = tf.constant(self.examples(), tf.string)
        return self._tensor

    def byte_lengths(self) -> np.ndarray:
        """Each row's share of the feature arrays' bytes: what the model reads of it."""
        n = len(self)
        total = sum(_array_bytes(a) for a in self.feature_arrays().values())
        return np.full(n, total // max(n, 1), dtype=np.int64)

    def sliced(self, start: int, stop: int) -> "ColumnRecords":
        arrays = None if self._arrays is None else {k: v[start:stop] for k, v in self._arrays.items()}
        return ColumnRecords(self._batch.slice(start, stop - start), self._options, arrays)

    def __len__(self) -> int:
        return self._batch.num_rows

    def __getitem__(self, i):
        return self.examples()[i]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.examples())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and self.examples() == list(other)

    def __repr__(self) -> str:
        return f"ColumnRecords({len(self)} rows)"

    def __reduce__(self):
        return ColumnRecords, (self._batch, self._options)


def _array_bytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return int(sum(len(v) for v in array.reshape(-1)))
    return int(array.nbytes)
