"""Isolating the records a batch call fails on, by halving. Pure."""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


def isolate_failures(run: Callable[[List[Any]], Any], items: Sequence[Any],
                     splittable: Callable[[BaseException], bool] = lambda error: True
                     ) -> Tuple[List[Tuple[List[Any], Any]], List[Tuple[Any, BaseException]]]:
    """Runs run(items); on failure halves the batch until each failing item is alone.

    Returns the (items, result) parts that succeeded, in order, and (item, error) per item that
    fails by itself. A batch without bad items costs one call; one bad item among n about 2 log2 n.
    An error for which splittable(error) is false fails every item of its batch: smaller batches
    cannot fix it (a model that ignores the batch would "succeed" on batches of one).
    """
    items = list(items)
    if not items:
        return [], []
    try:
        return [(items, run(items))], []
    except Exception as e:  # pylint: disable=broad-except  # isolated below, then a dead letter
        if len(items) == 1 or not splittable(e):
            return [], [(item, e) for item in items]
        middle = len(items) // 2
        left_ok, left_bad = isolate_failures(run, items[:middle], splittable)
        right_ok, right_bad = isolate_failures(run, items[middle:], splittable)
        return left_ok + right_ok, left_bad + right_bad


def concat_parts(parts: Sequence[Tuple[List[int], Dict[str, np.ndarray]]]
                 ) -> Tuple[List[int], Optional[Dict[str, np.ndarray]]]:
    """The (indices, columnar outputs) parts isolate_failures returned, as one (indices, outputs)."""
    if not parts:
        return [], None
    if len(parts) == 1:
        return parts[0]
    indices = [i for part_indices, _ in parts for i in part_indices]
    names = parts[0][1].keys()
    return indices, {n: np.concatenate([outputs[n] for _, outputs in parts]) for n in names}
