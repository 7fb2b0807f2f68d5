"""Input examples with predictions added as features: the examples output of TFX's BulkInferrer.

Each scored record is written back as its own tf.Example plus one feature per chosen output
(output_example_spec in BulkInferrer's terms): float outputs as float_list, integer and bool
outputs as int64_list, strings as bytes_list, every value of the output flattened. A later TFX
component (or this job, on the next model) reads them like any TFRecord of tf.Example.
"""

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from transforms.records.chunk import PREDICTION_LOG, ScoredChunk
from transforms.sinks.base import Sink, SinkConfig, one_model_problem
from transforms.sinks.format import FormatChunkFn, format_chunks


class OutputFeatureError(ValueError):
    """An output that cannot be stored as a feature, or a mapping that names none."""


def parse_output_features(text: Optional[str]) -> Dict[str, str]:
    """'y=y_pred,scores' -> {"y": "y_pred", "scores": "scores"}; empty: every output, own name."""
    mapping = {}
    for part in (text or "").split(","):
        if part.strip():
            output, _, feature = part.partition("=")
            mapping[output.strip()] = (feature or output).strip()
    return mapping


def _store(feature: feature_pb2.Feature, value: np.ndarray) -> None:
    flat = np.asarray(value).reshape(-1)
    kind = flat.dtype.kind
    if kind == "f":
        feature.float_list.value.extend(flat.astype(np.float32).tolist())
    elif kind in "iub":
        feature.int64_list.value.extend(flat.astype(np.int64).tolist())
    elif kind in "OSU":
        feature.bytes_list.value.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat)
    else:
        raise OutputFeatureError(f"an output of dtype {flat.dtype} cannot be a tf.Example feature")


def example_with_outputs(serialized: bytes, outputs: Mapping[str, np.ndarray],
                         features: Mapping[str, str]) -> bytes:
    """The record's tf.Example with outputs[name] stored as feature features[name] (every output,
    under its own name, when features is empty). An output replaces a feature of the same name."""
    example = example_pb2.Example.FromString(serialized)
    chosen = features or {name: name for name in outputs if name != PREDICTION_LOG}
    for output, feature_name in chosen.items():
        if output not in outputs:
            raise OutputFeatureError(f"no output {output!r}; the model has {sorted(outputs)}")
        example.features.feature[feature_name].Clear()
        _store(example.features.feature[feature_name], outputs[output])
    return example.SerializeToString()


class FormatExamplesFn(FormatChunkFn):
    """ScoredChunk of a one-model job -> serialized tf.Examples with the chosen outputs added."""

    def __init__(self, features: Mapping[str, str]):
        self._features = dict(features)

    def format(self, scored: ScoredChunk) -> Tuple[Iterable[bytes], int]:
        ((_, result),) = scored.models.items()
        examples = [example_with_outputs(scored.records[position], {n: v[row] for n, v in result.outputs.items()},
                                         self._features) for row, position in enumerate(result.indices)]
        return examples, len(examples)


@beam.ptransform_fn
def WriteExamples(examples, prefix: str, num_shards: int = 0, compression: Optional[str] = None):
    """Serialized tf.Examples -> PREFIX-SSSSS-of-NNNNN.tfrecord (.tfrecord.gz with gzip)."""
    gzip = compression == "gzip"
    return examples | "Write" >> beam.io.WriteToTFRecord(
        prefix, file_name_suffix=".tfrecord.gz" if gzip else ".tfrecord", num_shards=num_shards,
        compression_type=beam.io.filesystem.CompressionTypes.GZIP if gzip else
        beam.io.filesystem.CompressionTypes.UNCOMPRESSED)


def check_output_features(features: Mapping[str, str], outputs: Sequence[str]) -> None:
    """Raises OutputFeatureError, before the job, for outputs the model does not have."""
    unknown = sorted(set(features) - set(outputs))
    if unknown:
        raise OutputFeatureError(f"--output_features names outputs {unknown}; the model has {sorted(outputs)}")


class ExamplesSink(Sink):
    name = "examples"
    suffix = ".tfrecord"
    echoes_inputs = True

    def flag_problems(self, config: SinkConfig) -> List[str]:
        if config.output_compression not in (None, "gzip"):
            return [f"--output_compression {config.output_compression!r} is not gzip"]
        return []

    def graph_problems(self, graph, config: SinkConfig) -> List[str]:
        problem = one_model_problem(self, graph, config)
        if problem:
            return [problem]
        try:
            check_output_features(dict(config.output_features),
                                  [name for name, _, _ in graph.nodes[0].model.row_output_specs()])
        except OutputFeatureError as e:
            return [str(e)]
        return []

    def location(self, config: SinkConfig) -> str:
        return f"{config.output}-*{self.suffix}{'.gz' if config.output_compression == 'gzip' else ''}"

    def write(self, scored, graph, config: SinkConfig):
        examples, unformatted = format_chunks(scored, "ToExamples", FormatExamplesFn(dict(config.output_features)))
        examples | "WriteExamples" >> WriteExamples(config.output, config.num_shards, config.output_compression)
        return unformatted
