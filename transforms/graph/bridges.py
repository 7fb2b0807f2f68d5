"""Feeding one model's outputs to the next: the input record plus the bridged features.

A serialized tf.Example is one length-delimited `features` field, and protobuf parsers merge
concatenated messages (the later map entry wins, in Python's protobuf and in TensorFlow's parser,
which logs a warning). So the next model's input is the original record's bytes followed by a
small Example holding only the bridged features: the original is never parsed or copied field by
field, and a bridged feature replaces an input feature of the same name.
"""

from typing import Mapping, Sequence

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from models.serving.feature_spec import Feature


class BridgeError(ValueError):
    """An output value that cannot fill the feature (wrong count or type) for one record."""


def _fill(feature: feature_pb2.Feature, value: np.ndarray, spec: Feature) -> None:
    flat = np.asarray(value).reshape(-1)
    if flat.size != spec.size and not spec.varlen:
        raise BridgeError(f"feature {spec.name!r} needs {spec.size} values, the output has {flat.size}")
    kind = flat.dtype.kind
    if spec.dtype == "float32" and kind == "f":
        feature.float_list.value.extend(flat.astype(np.float32).tolist())
    elif spec.dtype == "int64" and kind in "iub":
        feature.int64_list.value.extend(flat.astype(np.int64).tolist())
    elif spec.dtype == "string" and kind in "OSU":
        feature.bytes_list.value.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat)
    else:
        raise BridgeError(f"feature {spec.name!r} stores {spec.dtype}; the output holds {flat.dtype}")


def bridged_features(values: Mapping[str, np.ndarray], specs: Mapping[str, Feature]) -> bytes:
    """One record's bridged features ({feature: output value}) as a serialized tf.Example."""
    example = example_pb2.Example()
    for name, value in values.items():
        _fill(example.features.feature[name], value, specs[name])
    return example.SerializeToString()


def bridged_record(record: bytes, values: Mapping[str, np.ndarray], specs: Mapping[str, Feature]) -> bytes:
    """The record with the bridged features added (or replaced): raises BridgeError."""
    return record + bridged_features(values, specs)


def bridged_batch(records: Sequence[bytes], columns: Mapping[str, np.ndarray],
                  specs: Mapping[str, Feature]) -> list:
    """Every record with its row of each bridged column ({feature: array [n, ...]})."""
    names = list(columns)
    return [bridged_record(record, {name: columns[name][i] for name in names}, specs)
            for i, record in enumerate(records)]
