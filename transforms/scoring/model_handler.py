"""ChunkModelHandler: our engines and executor behind Beam's own RunInference.

For Beam users who already build pipelines around apache_beam.ml.inference.RunInference:

    keyed | RunInference(ChunkModelHandler(model_or_graph))

takes (key, serialized tf.Example) and gives (key, PredictionResult) per record. A batch that
Beam forms is scored as one chunk by the same executor the command-line jobs run
(transforms.scoring.executor.score_chunk), so a bad record never fails its batch:

- scored:   PredictionResult(example=serialized, inference={"<model>": {"<output>": value}, ...},
            model_id=the models, joined by "+")
- rejected: PredictionResult(example=serialized, inference=<the dead-letter row>,
            model_id=DEAD_LETTER_MODEL_ID)

With several models a record can have both: the outputs of the models that scored it and a dead
letter per model that did not (per model, records = outputs + dead letters naming it).
"""

import base64
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from apache_beam.ml.inference import base

from models.serving.model import ServingModel
from transforms.graph.model import ModelGraph
from transforms.records.chunk import DEFAULT_CHUNK_SIZE, RecordChunk
from transforms.records.rows import KEY_FIELD, rows_from_block
from transforms.runtime.gpu import GpuSettings
from transforms.scoring.beam import as_graph
from transforms.sinks.format import format_rows
from transforms.scoring.engines import BatchCall, batch_calls
from transforms.scoring.executor import score_chunk

DEAD_LETTER_MODEL_ID = "dead_letter"


class LoadedModels(dict):
    """{model name: batch call}; a dict subclass, since Beam keeps the loaded model by weak reference."""


class ChunkModelHandler(base.ModelHandler):
    """A Beam ModelHandler over (key, serialized tf.Example) for one model or a model graph."""

    def __init__(self, model: Union[ServingModel, ModelGraph], engine: Optional[str] = None,
                 key_feature: Optional[str] = None, max_batch_size: int = DEFAULT_CHUNK_SIZE,
                 gpu: Optional[GpuSettings] = None):
        super().__init__()
        self._graph = as_graph(model, engine)
        self._key_feature = key_feature
        self._max_batch_size = max_batch_size
        self._gpu = gpu or GpuSettings()

    def load_model(self) -> LoadedModels:
        self._gpu.apply()
        return LoadedModels(batch_calls(self._graph))

    def run_inference(self, batch: Sequence[Tuple[str, bytes]], model: Mapping[str, BatchCall],
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[Tuple[str, base.PredictionResult]]:
        chunk = RecordChunk([key for key, _ in batch], [record for _, record in batch])
        scored = score_chunk(self._graph, model, chunk, self._key_feature)
        label = "+".join(self._graph.names)
        results: List[Tuple[str, base.PredictionResult]] = []
        positions = scored.row_positions()
        for position, row in zip(positions, rows_from_block(*format_rows(self._graph, scored))):
            key = row.pop(KEY_FIELD)
            results.append((key, base.PredictionResult(scored.records[position], row, label)))
        for dead in scored.dead:
            raw = base64.b64decode(dead["input_base64"]) if dead["input_base64"] is not None else None
            results.append((dead["key"], base.PredictionResult(raw, dead, DEAD_LETTER_MODEL_ID)))
        return results

    def get_num_bytes(self, batch: Sequence[Tuple[str, bytes]]) -> int:
        return sum(len(record) for _, record in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def get_metrics_namespace(self) -> str:
        return "tfinfer"
