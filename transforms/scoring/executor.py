"""score_chunk: every model of a graph on one chunk of records. Pure, given one batch call per model.

This is the one place a record is scored, for every job: batch or stream, one model (a graph of
one node) or many, either engine, any source. All models of a graph run on the same chunk, so a
key's outputs from every branch meet without a shuffle or a per-key join.

The clean case costs one call per model on the whole chunk. When any call fails, the chunk is
redone record by record: a record that is not a tf.Example (or lacks the key feature) becomes one
dead letter without a model; then, per model in graph order, a record whose input cannot be built
(an upstream model failed, a bridged value does not fit: convert) or does not fit the model's
spec (validate) becomes a dead letter naming that model, and the records the model itself
rejects are isolated by halving (infer; outputs without one row per input fail the whole batch,
models.serving.results.OutputBatchError). Post-processing runs per model on columns; a failing
step is isolated to its records the same way (postprocess). So, per model:

    records that reached the models = records with that model's outputs + dead letters naming it

and with one model: records in = prediction rows + dead letters. A record keeps the outputs of
every model that succeeded on it (a partial row). Every dead letter carries the record's final
key, its original bytes and its source (transforms.records.dead_letters).
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from models.serving.examples import RecordError, parse_example, validate_example
from models.serving.results import OutputBatchError
from transforms.graph.bridges import BridgeError, bridged_batch, bridged_record
from transforms.graph.model import GraphNode, ModelGraph
from transforms.graph.postprocessors import apply_steps
from transforms.records.chunk import ModelResult, RecordChunk, ScoredChunk
from transforms.records.dead_letters import CONVERT, INFER, POSTPROCESS, dead_letter, model_failure_dead_letter
from transforms.records.keys import key_from_feature, keys_by_feature
from transforms.scoring.isolate import concat_parts, isolate_failures

BatchCall = Callable[[Sequence[bytes]], Dict[str, np.ndarray]]


def _feature_specs(node: GraphNode):
    return {f.name: f for f in node.model.feature_spec}


def _bridged_columns(node: GraphNode, raw: Mapping[str, ModelResult]) -> Dict[str, np.ndarray]:
    return {b.feature: raw[b.source].outputs[b.output] for b in node.bridges}


def _score_whole_chunk(graph: ModelGraph, calls: Mapping[str, BatchCall], records: Sequence[bytes]
                       ) -> Dict[str, ModelResult]:
    everyone = list(range(len(records)))
    results: Dict[str, ModelResult] = {}
    for node in graph.nodes:
        inputs = records if not node.bridges else bridged_batch(
            records, _bridged_columns(node, results), _feature_specs(node))
        results[node.name] = ModelResult(everyone, calls[node.name](inputs))
    return results


class ChunkDeadLetters:
    """Builds the chunk's dead letters: the record's final key, original bytes and source."""

    def __init__(self, chunk: RecordChunk, keys: Sequence[str]):
        self.chunk, self.keys, self.rows = chunk, keys, []

    def add(self, i: int, stage: str, error: Any, model: Optional[str] = None, error_type: Optional[str] = None):
        self.rows.append(dead_letter(stage, error, key=self.keys[i], raw=self.chunk.records[i],
                                     source=self.chunk.source(i), model=model, error_type=error_type))

    def model_failure(self, i: int, error: BaseException, node: GraphNode, model_input: bytes):
        self.rows.append(model_failure_dead_letter(
            error, self.keys[i], self.chunk.records[i], node.model.feature_spec, node.name,
            self.chunk.source(i)) if model_input == self.chunk.records[i] else
            dead_letter(INFER, error, key=self.keys[i], raw=self.chunk.records[i],
                        source=self.chunk.source(i), model=node.name))


def _model_input(node: GraphNode, i: int, record: bytes, results: Mapping[str, ModelResult],
                 rows: Mapping[str, Dict[int, int]]) -> bytes:
    if not node.bridges:
        return record
    values = {b.feature: results[b.source].outputs[b.output][rows[b.source][i]] for b in node.bridges}
    return bridged_record(record, values, _feature_specs(node))


def _score_node_by_record(node: GraphNode, call: BatchCall, records: Sequence[bytes], alive: Sequence[int],
                          results: Mapping[str, ModelResult], letters: ChunkDeadLetters) -> Optional[ModelResult]:
    rows = {name: {pos: row for row, pos in enumerate(results[name].indices)}
            for name in node.sources if name in results}
    inputs: Dict[int, bytes] = {}
    for i in alive:
        missing = [s for s in node.sources if i not in rows.get(s, {})]
        if missing:
            letters.add(i, INFER, f"not run: its input comes from model {missing[0]!r}, which has no "
                        f"output for this record", model=node.name, error_type="UpstreamModelFailed")
            continue
        try:
            model_input = _model_input(node, i, records[i], results, rows)
            validate_example(model_input, node.model.feature_spec)
            inputs[i] = model_input
        except BridgeError as e:
            letters.add(i, CONVERT, e, model=node.name)
        except RecordError as e:
            letters.add(i, e.stage, e, model=node.name)
    parts, failures = isolate_failures(lambda positions: call([inputs[i] for i in positions]), list(inputs),
                                       splittable=lambda error: not isinstance(error, OutputBatchError))
    for i, error in failures:
        letters.model_failure(i, error, node, inputs[i])
    indices, outputs = concat_parts(parts)
    return ModelResult(indices, outputs) if indices else None


def _score_by_record(graph: ModelGraph, calls: Mapping[str, BatchCall], chunk: RecordChunk,
                     key_feature: Optional[str], letters: ChunkDeadLetters) -> Dict[str, ModelResult]:
    alive = []
    for i, record in enumerate(chunk.records):
        try:
            example = parse_example(record)
            if key_feature:
                letters.keys[i] = key_from_feature(example, key_feature)
            alive.append(i)
        except RecordError as e:
            letters.add(i, e.stage, e)
    results: Dict[str, ModelResult] = {}
    for node in graph.nodes:
        result = _score_node_by_record(node, calls[node.name], chunk.records, alive, results, letters)
        if result is not None:
            results[node.name] = result
    return results


def postprocess_result(model: str, steps: Sequence[Any], result: ModelResult, letters: ChunkDeadLetters
                       ) -> Optional[ModelResult]:
    """One model's outputs through its post-processing steps, failing records isolated
    (postprocess dead letters); None when no record is left."""
    if not steps:
        return result

    def run(rows: Sequence[int]):
        return apply_steps(steps, {k: v[np.asarray(rows, dtype=np.int64)] for k, v in result.outputs.items()})

    parts, failures = isolate_failures(run, range(len(result.indices)))
    for row, error in failures:
        letters.add(result.indices[row], POSTPROCESS, error, model=model)
    rows, outputs = concat_parts(parts)
    return ModelResult([result.indices[r] for r in rows], outputs) if rows else None


def chunk_keys(chunk: RecordChunk, key_feature: Optional[str]) -> Optional[List[str]]:
    """The chunk's final keys read all at once (its own keys without a key feature), or None when
    some record needs the per-record path."""
    return keys_by_feature(chunk.records, key_feature) if key_feature else list(chunk.keys)


READ_KEYS = object()  # score_chunk reads the chunk's keys itself


def score_chunk(graph: ModelGraph, calls: Mapping[str, BatchCall], chunk: RecordChunk,
                key_feature: Optional[str] = None, keys: Any = READ_KEYS) -> ScoredChunk:
    """Every model of the graph on one chunk; calls maps model name -> batch call.

    key_feature: read each record's key from this feature (bytes or int64) instead of chunk.keys.
    keys: chunk_keys(chunk, key_feature) when the caller has read them already (on another thread).
    """
    if keys is READ_KEYS:
        keys = chunk_keys(chunk, key_feature)
    results = None
    if keys is not None:
        try:
            results = _score_whole_chunk(graph, calls, chunk.records)
        except Exception:  # pylint: disable=broad-except  # sorted out record by record below
            results = None
    letters = ChunkDeadLetters(chunk, list(chunk.keys) if results is None else keys)
    if results is None:
        results = _score_by_record(graph, calls, chunk, key_feature, letters)
    finished: Dict[str, ModelResult] = {}
    for node in graph.nodes:
        if node.name in results:
            done = postprocess_result(node.name, node.postprocess, results[node.name], letters)
            if done is not None:
                finished[node.name] = done
    return ScoredChunk(letters.keys, chunk.records, finished, letters.rows, chunk.sources)
