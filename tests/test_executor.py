"""The scoring core without TensorFlow models: isolate_failures, and score_chunk with fake batch
calls (tests/support/fakes.py) that fail on chosen records."""

import math

import numpy as np
import pytest

from models.serving.examples import make_example
from models.serving.feature_spec import Feature
from tests.support.fakes import FakeBatchCall, fake_model
from transforms.graph.model import GraphNode, ModelGraph, parallel_graph
from transforms.graph.postprocessors import CallFunction
from transforms.records.chunk import FileRecords, RecordChunk
from transforms.records.dead_letters import FIELDS
from transforms.scoring.executor import score_chunk
from transforms.scoring.isolate import concat_parts, isolate_failures

SPEC = (Feature("x", "float32", (2,)),)


def record(x, **extra):
    return make_example({"x": x, **extra}).SerializeToString()


# --- isolate_failures -------------------------------------------------------------------------

def counting(fail_on):
    calls = []

    def run(items):
        calls.append(list(items))
        if any(i in fail_on for i in items):
            raise ValueError(f"bad among {items}")
        return [i * 10 for i in items]
    return run, calls


def test_a_clean_batch_costs_one_call():
    run, calls = counting(set())
    parts, failures = isolate_failures(run, range(8))
    assert parts == [(list(range(8)), [i * 10 for i in range(8)])] and failures == [] and len(calls) == 1


@pytest.mark.parametrize("n, bad", [(16, {5}), (1024, {0}), (1024, {1023}), (100, {3, 4, 97}), (7, set(range(7)))])
def test_each_failing_item_is_isolated_and_the_rest_kept_in_order(n, bad):
    run, calls = counting(bad)
    parts, failures = isolate_failures(run, range(n))
    kept = [i for items, _ in parts for i in items]
    assert kept == [i for i in range(n) if i not in bad]
    assert all(result == [i * 10 for i in items] for items, result in parts)
    assert [item for item, _ in failures] == sorted(bad)
    assert all(isinstance(error, ValueError) for _, error in failures)
    if len(bad) == 1:  # one bad item among n costs about 2 log2 n calls, not n
        assert len(calls) <= 2 * math.ceil(math.log2(n)) + 1


def test_nothing_to_run_is_no_call():
    run, calls = counting(set())
    assert isolate_failures(run, []) == ([], []) and calls == []


def test_concat_parts_joins_columns_in_item_order():
    parts = [([0, 1], {"y": np.float32([[0], [1]])}), ([3], {"y": np.float32([[3]])})]
    indices, outputs = concat_parts(parts)
    assert indices == [0, 1, 3] and outputs["y"].tolist() == [[0], [1], [3]]
    assert concat_parts([]) == ([], None)


# --- score_chunk with fake calls ----------------------------------------------------------------

def test_clean_chunk_one_call_per_model_and_no_dead_letters():
    graph = parallel_graph([fake_model("a", SPEC), fake_model("b", SPEC)])
    calls = {"a": FakeBatchCall(SPEC), "b": FakeBatchCall(SPEC)}
    chunk = RecordChunk(["k0", "k1", "k2"], [record([float(i), 1.0]) for i in range(3)])
    scored = score_chunk(graph, calls, chunk)
    assert calls["a"].calls == [3] and calls["b"].calls == [3]
    assert scored.dead == [] and scored.row_positions() == [0, 1, 2]
    assert scored.models["a"].outputs["y"][:, 0].tolist() == [1.0, 2.0, 3.0]


def test_per_model_conservation_with_partial_rows_and_whole_dead_letters():
    """a fails on records holding 'poison'; b accepts them. Every dead letter has every field,
    the record's original bytes and its source; per model, records = outputs + dead letters."""
    graph = parallel_graph([fake_model("a", SPEC), fake_model("b", SPEC)])
    calls = {"a": FakeBatchCall(SPEC, fail_on=lambda r: b"poison" in r), "b": FakeBatchCall(SPEC)}
    records = [record([float(i), 0.5]) for i in range(40)]
    records[3] = b"\x0a\xff garbage"                      # not a tf.Example: one dead letter, no model
    records[11] = record([1.0])                           # does not fit the spec: one per model
    records[20] = record([2.0, 2.0], tag="poison")        # a rejects it, b scores it
    chunk = RecordChunk([f"f:{i}" for i in range(40)], records, FileRecords("/data/f", 100, 40))
    scored = score_chunk(graph, calls, chunk)
    dead = sorted(scored.dead, key=lambda d: (d["key"], str(d["model"])))
    assert [(d["key"], d["stage"], d["model"]) for d in dead] == [
        ("f:11", "validate", "a"), ("f:11", "validate", "b"), ("f:20", "infer", "a"), ("f:3", "decode", None)]
    for d in dead:
        i = int(d["key"].split(":")[1])
        assert list(d) == list(FIELDS)
        assert d["source"] == {"file": "/data/f", "record": 100 + i}
        assert d["input_base64"] is not None
    assert d["error_type"] == "RecordError"
    reached = 40 - 1  # the garbage record reaches no model
    for name in ("a", "b"):
        outputs = len(scored.models[name].indices)
        assert outputs + sum(d["model"] == name for d in dead) == reached
    assert 20 in scored.models["b"].indices and 20 not in scored.models["a"].indices
    assert scored.row_positions() == [i for i in range(40) if i not in (3, 11)]


def test_key_feature_keys_rows_and_dead_letters():
    graph = parallel_graph([fake_model("a", SPEC)])
    records = [record([1.0, 2.0], id="alpha"), record([1.0], id="beta"), record([3.0, 4.0]),
               record([5.0, 6.0], id="gamma")]
    scored = score_chunk(graph, {"a": FakeBatchCall(SPEC)}, RecordChunk(["p0", "p1", "p2", "p3"], records),
                         key_feature="id")
    assert [scored.keys[i] for i in scored.row_positions()] == ["alpha", "gamma"]
    # the key feature's value names the dead letter wherever the record has one
    assert sorted((d["key"], d["stage"]) for d in scored.dead) == [("beta", "validate"), ("p2", "validate")]


def test_a_failing_post_processing_step_is_isolated_to_its_records():
    def explode_on_large(outputs):
        if (outputs["y"] > 100).any():
            raise ValueError("too large to label")
        return {"y": outputs["y"], "label": np.where(outputs["y"][:, 0] > 5, "big", "small")}

    graph = ModelGraph((GraphNode(fake_model("a", SPEC), postprocess=(CallFunction(explode_on_large),)),))
    records = [record([float(i), 1.0]) for i in range(10)]
    records[6] = record([500.0, 1.0])
    scored = score_chunk(graph, {"a": FakeBatchCall(SPEC)}, RecordChunk([f"k{i}" for i in range(10)], records))
    assert [(d["key"], d["stage"], d["model"], d["error_type"]) for d in scored.dead] == [
        ("k6", "postprocess", "a", "ValueError")]
    assert scored.models["a"].indices == [i for i in range(10) if i != 6]
    assert scored.models["a"].outputs["label"].tolist()[:6] == ["small"] * 5 + ["big"]
