"""ToPredictionRows: keyed PredictionLogs from tfx-bsl's own RunInference -> our rows.

For pipelines that call tfx-bsl directly:

    logs = keyed | tfx_bsl.public.beam.RunInference(InferenceSpecType(saved_model_spec=...))
    rows, dead = logs | ToPredictionRows("model", postprocess=[Classify(labels=[...])])
    rows | WriteJsonLines("out/predictions")     # or WritePredictionRows(...) into BigQuery

Predict, classify, regress and multi-inference logs are decoded (models.serving.prediction_log) into
the same columns the engines give, go through the same post-processing steps
(transforms.graph.postprocessors) and become the same rows (transforms.records.rows) as a job
scoring the model itself. A log that cannot be decoded or post-processed is a dead letter
(stage postprocess) whose raw input is the serialized PredictionLog.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from models.serving.prediction_log import outputs_from_log
from transforms.records.chunk import DEFAULT_CHUNK_SIZE, ModelResult, RecordChunk
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, WithDeadLetters
from transforms.records.rows import rows_block, rows_from_block
from transforms.runtime.accounting import AccountedDoFn
from transforms.scoring.executor import ChunkDeadLetters, postprocess_result


def logs_to_rows(model: str, keys: Sequence[str], logs: Sequence[Any], steps: Sequence[Any] = ()
                 ) -> Tuple[List[dict], List[dict]]:
    """(rows, dead letters) of keyed PredictionLogs of one model. Pure."""
    chunk = RecordChunk(list(keys), [log.SerializeToString() for log in logs])
    letters = ChunkDeadLetters(chunk, chunk.keys)
    decoded: Dict[int, Dict[str, np.ndarray]] = {}
    for i, log in enumerate(logs):
        try:
            decoded[i] = {name: np.asarray(value) for name, value in outputs_from_log(log).items()}
        except Exception as e:  # pylint: disable=broad-except  # this log's failure, a dead letter
            letters.add(i, POSTPROCESS, e, model=model)
    # outputs become columns: a log whose outputs differ in names or shapes from the first one's
    # cannot join them (a model gives every record the same outputs)
    shape_of = {i: {n: v.shape for n, v in outputs.items()} for i, outputs in decoded.items()}
    reference = shape_of[min(decoded)] if decoded else None
    for i in list(decoded):
        if shape_of[i] != reference:
            letters.add(i, POSTPROCESS, f"outputs {shape_of[i]} differ from the other records' {reference}",
                        model=model, error_type="OutputShapeError")
            del decoded[i]
    result = None
    if decoded:
        indices = sorted(decoded)
        result = postprocess_result(model, steps, ModelResult(indices, {
            name: np.stack([decoded[i][name] for i in indices]) for name in reference}), letters)
    rows = rows_from_block(*rows_block(chunk.keys, {model: result})) if result is not None else []
    return rows, letters.rows


class LogsToRowsFn(AccountedDoFn):
    def __init__(self, model: str, steps: Sequence[Any]):
        self._model = model
        self._steps = tuple(steps)


    def process(self, batch):
        rows, dead = logs_to_rows(self._model, [k for k, _ in batch], [log for _, log in batch], self._steps)
        yield from self.emit_predictions(rows, len(rows))
        yield from self.reject(dead)


@beam.ptransform_fn
def ToPredictionRows(keyed_logs, model: str, postprocess: Optional[Sequence[Any]] = None,
                     max_batch_size: int = DEFAULT_CHUNK_SIZE):
    """(key, PredictionLog) of one model -> WithDeadLetters(row dicts, dead letters)."""
    result = (keyed_logs
              | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=max_batch_size)
              | "ToRows" >> beam.ParDo(LogsToRowsFn(model, postprocess or ())).with_outputs(
                  DEAD_LETTER_TAG, main="rows"))
    return WithDeadLetters(result.rows, result[DEAD_LETTER_TAG])
