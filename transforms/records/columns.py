"""ColumnRecords: a chunk of rows read in bulk, its tf.Examples built only when asked for.

A source hands a clean block of rows (a Parquet record batch, decoded JSON Lines or CSV rows)
over as ColumnRecords with the arrays of the model's features already cut from them
(transforms.sources.columnar). A signature that
takes tensors is fed those arrays (models.serving.dense.TensorInputs.from_arrays): the rows reach
the model without a Python object or a tf.Example per row. Everything that needs the records
as tf.Examples (a tf.Example signature, tfx-bsl, passthrough columns, PredictionLogs of them, a
failing chunk's isolation, dead letters) reads them as any other chunk's: the rows are then
converted one by one with the rules every row-shaped source uses (InstanceOptions.convert), once,
and kept.

Pickled (to other workers) as the rows and the options; the arrays are cut again there.
"""

from typing import Iterator, List, Mapping, Optional, Sequence

import numpy as np


class ColumnRecords(Sequence):
    """Sequence[bytes] of the serialized tf.Examples of rows (an Arrow record batch, or a list of
    decoded instances), built on first use; feature_arrays(): {feature: [n, ...] array}, what
    parsing them would give."""

    __slots__ = ("_rows", "_options", "_arrays", "_list", "_tensor")

    def __init__(self, rows, options, arrays: Optional[Mapping[str, np.ndarray]] = None):
        self._rows, self._options = rows, options
        self._arrays, self._list, self._tensor = arrays, None, None

    def feature_arrays(self) -> Mapping[str, np.ndarray]:
        """{spec feature name: array of every row's values} (shape [n, *stored shape], the storage
        dtype: float32, int64, or bytes objects)."""
        if self._arrays is None:
            from transforms.sources.columnar import column_arrays

            self._arrays = column_arrays(self._rows, self._options)
            if self._arrays is None:  # cannot happen for a batch the source cut once
                raise ValueError("ColumnRecords: the rows no longer give feature arrays")
        return self._arrays

    def examples(self) -> List[bytes]:
        if self._list is None:
            rows = self._rows if isinstance(self._rows, list) else self._rows.to_pylist()
            self._list = [self._options.convert(row) for row in rows]
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
        rows = self._rows[start:stop] if isinstance(self._rows, list) else self._rows.slice(start, stop - start)
        return ColumnRecords(rows, self._options, arrays)

    def __len__(self) -> int:
        return len(self._rows) if isinstance(self._rows, list) else self._rows.num_rows

    def __getitem__(self, i):
        return self.examples()[i]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.examples())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and self.examples() == list(other)

    def __repr__(self) -> str:
        return f"ColumnRecords({len(self)} rows)"

    def __reduce__(self):
        return ColumnRecords, (self._rows, self._options)


def _array_bytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return int(sum(len(v) for v in array.reshape(-1)))
    return int(array.nbytes)
