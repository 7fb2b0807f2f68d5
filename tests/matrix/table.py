"""The conformance matrix's table: sources x model shapes x sinks; a cell is a triple.

A new source or sink is one entry in SOURCES or SINKS (its flags) and gets every cell. What a
cell is expected to do follows from rules, not from a list of cells:

- REFUSALS: crossings the commands refuse at launch (exit 2), each with the reason's substring;
- KNOWN_BUGS: crossings that fail today because of a real bug, run as xfail(strict=True) so they
  turn red when the fix lands (then the rule goes);
- FAST: the cells run by a plain `pytest tests` (a greedy pairwise cover: every pair of source,
  shape and sink values appears in some fast cell); the rest are marked matrix_full.
"""

import dataclasses
import itertools
from typing import Callable, Dict, List, Optional, Tuple

SOURCES = ("tfrecord", "tfrecord_gz", "jsonl", "csv", "parquet", "bigquery", "pubsub")
SHAPES = ("single", "parallel", "chain", "postprocess", "mixed", "dense", "arrays")
# one model: mixed, whose outputs are of every dtype; dense, whose signature takes tensors; arrays,
# whose signature takes fixed-shape tensors only (row-shaped sources reach it in bulk)
SINGLE_MODEL_SHAPES = ("single", "mixed", "dense", "arrays")
BULK_SOURCES = ("jsonl", "csv", "parquet", "bigquery")  # rows handed to arrays in bulk
SINKS = ("jsonl", "parquet", "tfrecord", "examples", "bigquery", "pubsub")
FILE_SINKS = ("jsonl", "parquet", "tfrecord", "examples")
STREAM_SOURCES = ("pubsub",)
STREAM_SINKS = ("pubsub",)
TEXT_SOURCES = ("jsonl", "csv")

Cell = Tuple[str, str, str]
Rule = Tuple[Callable[[str, str, str], bool], str]

REFUSALS: List[Rule] = [
    (lambda src, shape, sink: src in STREAM_SOURCES and sink in FILE_SINKS, "are batch_infer flags"),
    (lambda src, shape, sink: src not in STREAM_SOURCES and sink in STREAM_SINKS,
     "stream_infer flag(s), not batch_infer's"),
    (lambda src, shape, sink: sink in ("tfrecord", "examples") and shape not in SINGLE_MODEL_SHAPES,
     "writes one model's results per record"),
]

# none today; the four found when the matrix was built (CSV list cells and {"b64"} string cells,
# Parquet from a model that rejects some records, keys in PredictionLogs and examples from
# JSON Lines/CSV/BigQuery) are fixed and their cells pass
KNOWN_BUGS: List[Rule] = []


@dataclasses.dataclass(frozen=True)
class Expectation:
    refused: Optional[str]  # the reason's substring when the crossing is refused at launch
    bug: Optional[str]      # the known bug that makes it fail today


def expectation(cell: Cell) -> Expectation:
    refused = next((reason for rule, reason in REFUSALS if rule(*cell)), None)
    bug = None if refused else next((reason for rule, reason in KNOWN_BUGS if rule(*cell)), None)
    return Expectation(refused, bug)


def all_cells() -> List[Cell]:
    return list(itertools.product(SOURCES, SHAPES, SINKS))


def cost(cell: Cell) -> int:
    """A rough relative run time: refusals are a launch check, emulator cells cost most."""
    src, _, sink = cell
    if expectation(cell).refused:
        return 1
    return 2 + 4 * (src == "bigquery" or sink == "bigquery") + 12 * (src in STREAM_SOURCES)


def _value_pairs(cell: Cell):
    src, shape, sink = cell
    return {("source", src, "shape", shape), ("source", src, "sink", sink), ("shape", shape, "sink", sink)}


def _runnable_pairs(cells: List[Cell]):
    return set().union(*(_value_pairs(c) for c in cells if not expectation(c).refused))


def pairwise_cover(cells: List[Cell]) -> List[Cell]:
    """Greedy: the cell covering most uncovered value pairs, the cheapest on a tie, until every pair
    of (source, shape), (source, sink) and (shape, sink) values is covered. A pair that some cell
    runs is covered only by a cell that runs; a refused cell covers the pairs that are only ever
    refused. Deterministic."""
    runnable = _runnable_pairs(cells)

    def covers(c):
        pairs = _value_pairs(c)
        return pairs - runnable if expectation(c).refused else pairs
    uncovered = set().union(*(_value_pairs(c) for c in cells))
    chosen = []
    while uncovered:
        best = max(cells, key=lambda c: (len(covers(c) & uncovered), -cost(c), _order(c)))
        chosen.append(best)
        uncovered -= covers(best)
    return chosen


def _order(cell: Cell) -> Tuple[int, int, int]:
    src, shape, sink = cell
    return (-SOURCES.index(src), -SHAPES.index(shape), -SINKS.index(sink))


FAST = frozenset(pairwise_cover(all_cells()))


def cell_id(cell: Cell) -> str:
    return "-".join(cell)


def describe() -> Dict[str, str]:
    """cell id -> 'fast/full, ok | refused: ... | xfail: ...' (the report's table)."""
    lines = {}
    for cell in all_cells():
        e = expectation(cell)
        state = f"refused: {e.refused}" if e.refused else f"xfail: {e.bug[:60]}" if e.bug else "ok"
        lines[cell_id(cell)] = f"{'fast' if cell in FAST else 'full'}  {state}"
    return lines
