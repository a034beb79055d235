"""Module allocation: where the update's squared norm goes, and how early that pattern settles.

The paper (Sec. 3.1) reads OPD's update as spending its norm on middle-layer MLPs and little on
embeddings and the outer layers. Here a group's share is its part of the total squared update,
sum_{tensors in group} ||dW||_F^2 / sum_{all tensors} ||dW||_F^2, at one checkpoint; a
checkpoint's allocation is settled when its per-tensor shares rank like the final checkpoint's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np


def shares(squared_norms: Sequence[float]) -> list[float | None]:
    """Each value's share of the sum; all None when the sum is 0 (no update at all)."""
    total = float(sum(squared_norms))
    if total <= 0.0:
        return [None] * len(squared_norms)
    return [float(value) / total for value in squared_norms]


def group_shares(
    squared_norms: Sequence[float], groups: Sequence[Hashable], keep: Callable[[Hashable], bool]
) -> dict[Hashable, float | None]:
    """Share of the total squared norm carried by each group for which keep(group) holds.

    The denominator is always the total over every tensor, so the kept groups' shares sum to 1
    only when nothing is left out (layer shares leave out the embeddings, final norm and head).
    """
    total = float(sum(squared_norms))
    sums: dict[Hashable, float] = {}
    for value, group in zip(squared_norms, groups, strict=True):
        if keep(group):
            sums[group] = sums.get(group, 0.0) + float(value)
    return {group: (value / total if total > 0 else None) for group, value in sums.items()}


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of values; ties share the mean of the ranks they span (scipy's rankdata)."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array), dtype=np.float64)
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman rank correlation: the Pearson correlation of the average ranks of x and y.

    None when either side is undefined (a None share, i.e. no update) or constant (no ranking).
    """
    if len(x) != len(y) or len(x) < 2 or any(v is None for v in [*x, *y]):
        return None
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    rank_x -= rank_x.mean()
    rank_y -= rank_y.mean()
    denominator = float(np.sqrt((rank_x**2).sum() * (rank_y**2).sum()))
    if denominator == 0.0:
        return None
    return float((rank_x * rank_y).sum()) / denominator
