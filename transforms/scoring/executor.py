"""Scoring a chunk of records through a model graph: pure, given one batch call per model.

All models of a graph run on the same chunk in one place, so a key's outputs from every branch
meet without a shuffle or a per-key join, in batch and in streaming alike.

The clean case costs one call per model on the whole chunk. When any call fails, the chunk is
redone record by record: records that are not tf.Examples (or lack the key feature) become one
dead letter each; then, per model in graph order, records whose input cannot be built (an upstream
model failed, a bridged value does not fit) or does not fit the model's spec become dead letters
naming that model, and failing records are isolated by halving. So, per model:
records that reached the models = records with that model's outputs + dead letters naming it.
A record keeps the outputs of every model that succeeded on it (a partial row).
"""

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from models.examples import RecordError, parse_example, validate_example
from transforms.graph.bridges import BridgeError, bridged_batch, bridged_record
from transforms.records.dead_letters import CONVERT, INFER, POSTPROCESS, dead_letter, error_text, model_failure_dead_letter
from transforms.scoring.fast_engine import concat_parts, isolate_failures
from transforms.graph.model import GraphNode, ModelGraph
from transforms.graph.postprocessors import apply_steps
from transforms.records.chunk import RecordChunk, keys_by_feature
from transforms.validate import key_from_feature, record_dead_letter

BatchCall = Callable[[Sequence[bytes]], Dict[str, np.ndarray]]


class ModelResult(NamedTuple):
    indices: List[int]  # chunk positions this model scored, ascending
    outputs: Dict[str, np.ndarray]  # each [len(indices), ...]


class GraphScore(NamedTuple):
    keys: List[str]  # final key per chunk position
    records: List[bytes]
    models: Dict[str, ModelResult]  # in graph order; a model that scored nothing is absent
    dead: List[Dict[str, Any]]
    sources: Optional[List[dict]] = None  # the chunk's record sources (--with_source)

    def row_positions(self) -> List[int]:
        """Chunk positions with at least one model's outputs (one prediction row each)."""
        return covered_positions(self.models, len(self.keys))


def covered_positions(models: Mapping[str, ModelResult], count: int) -> List[int]:
    everyone = list(range(count))
    if models and all(result.indices == everyone for result in models.values()):
        return everyone  # the common case: every model scored every record
    return sorted({i for result in models.values() for i in result.indices})


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


def _with_model(row: Dict[str, Any], model: str) -> Dict[str, Any]:
    row["model"] = model
    return row


def _model_input(node: GraphNode, i: int, record: bytes, results: Mapping[str, ModelResult],
                 rows: Mapping[str, Dict[int, int]]) -> bytes:
    if not node.bridges:
        return record
    values = {b.feature: results[b.source].outputs[b.output][rows[b.source][i]] for b in node.bridges}
    return bridged_record(record, values, _feature_specs(node))


def _score_node_by_record(node: GraphNode, call: BatchCall, chunk_keys: Sequence[str],
                          records: Sequence[bytes], alive: Sequence[int],
                          results: Mapping[str, ModelResult], dead: List[Dict[str, Any]]
                          ) -> Optional[ModelResult]:
    rows = {name: {pos: row for row, pos in enumerate(results[name].indices)}
            for name in node.sources if name in results}
    inputs: Dict[int, bytes] = {}
    for i in alive:
        key = chunk_keys[i]
        missing = [s for s in node.sources if i not in rows.get(s, {})]
        if missing:
            dead.append(dead_letter(
                INFER, f"not run: its input comes from model {missing[0]!r}, which has no output for "
                f"this record", key=key, raw=records[i], model=node.name, error_type="UpstreamModelFailed"))
            continue
        try:
            inputs[i] = _model_input(node, i, records[i], results, rows)
            validate_example(inputs[i], node.model.feature_spec)
        except BridgeError as e:
            dead.append(dead_letter(CONVERT, e, key=key, raw=records[i], model=node.name))
            inputs.pop(i, None)
        except RecordError as e:
            dead.append(_with_model(record_dead_letter(e, key, inputs[i]), node.name))
            del inputs[i]
    parts, failures = isolate_failures(lambda positions: call([inputs[i] for i in positions]), list(inputs))
    for i, error in failures:
        dead.append(_with_model(model_failure_dead_letter(
            error, chunk_keys[i], inputs[i], node.model.feature_spec, node.name), node.name))
    indices, outputs = concat_parts(parts)
    return ModelResult(indices, outputs) if indices else None


def _score_by_record(graph: ModelGraph, calls: Mapping[str, BatchCall], chunk: RecordChunk,
                     key_feature: Optional[str]):
    keys, records = list(chunk.keys), list(chunk.records)
    dead: List[Dict[str, Any]] = []
    alive = []
    for i, record in enumerate(records):
        try:
            example = parse_example(record)
            if key_feature:
                keys[i] = key_from_feature(example, key_feature)
            alive.append(i)
        except RecordError as e:
            dead.append(record_dead_letter(e, chunk.keys[i], record))
    results: Dict[str, ModelResult] = {}
    for node in graph.nodes:
        result = _score_node_by_record(node, calls[node.name], keys, records, alive, results, dead)
        if result is not None:
            results[node.name] = result
    return keys, results, dead


def _postprocess(node: GraphNode, result: ModelResult, keys: Sequence[str], records: Sequence[bytes],
                 dead: List[Dict[str, Any]]) -> Optional[ModelResult]:
    if not node.postprocess:
        return result

    def run(rows: Sequence[int]):
        return apply_steps(node.postprocess, {k: v[np.asarray(rows, dtype=np.int64)]
                                              for k, v in result.outputs.items()})

    parts, failures = isolate_failures(run, range(len(result.indices)))
    for row, error in failures:
        position = result.indices[row]
        dead.append(dead_letter(POSTPROCESS, error_text(error), key=keys[position], raw=records[position],
                                model=node.name, error_type=type(error).__name__))
    rows, outputs = concat_parts(parts)
    return ModelResult([result.indices[r] for r in rows], outputs) if rows else None


def score_graph_chunk(graph: ModelGraph, calls: Mapping[str, BatchCall], chunk: RecordChunk,
                      key_feature: Optional[str] = None) -> GraphScore:
    """Every model of the graph on one chunk; calls maps model name -> batch call."""
    keys = keys_by_feature(chunk.records, key_feature) if key_feature else list(chunk.keys)
    results = None
    if keys is not None:
        try:
            results = _score_whole_chunk(graph, calls, chunk.records)
            dead: List[Dict[str, Any]] = []
        except Exception:  # pylint: disable=broad-except  # sorted out record by record below
            results = None
    if results is None:
        keys, results, dead = _score_by_record(graph, calls, chunk, key_feature)
    finished: Dict[str, ModelResult] = {}
    for node in graph.nodes:
        if node.name in results:
            done = _postprocess(node, results[node.name], keys, chunk.records, dead)
            if done is not None:
                finished[node.name] = done
    return GraphScore(keys, list(chunk.records), finished, dead, chunk.sources)
