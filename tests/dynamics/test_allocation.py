"""Allocation shares and Spearman rank correlation against brute-force references.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from foresight.dynamics.allocation import average_ranks, group_shares, shares, spearman


def brute_force_ranks(values: list[float]) -> list[float]:
    """Rank i = 1 + #smaller + (#equal - 1) / 2: the mean rank of a block of ties."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def test_shares_sum_to_one_and_zero_total_is_null():
    assert shares([1.0, 3.0]) == [0.25, 0.75]
    assert shares([0.0, 0.0]) == [None, None]


def test_group_shares_use_the_total_over_everything():
    squared = [1.0, 2.0, 3.0, 4.0]
    layers = [None, 0, 0, 1]
    result = group_shares(squared, layers, keep=lambda layer: layer is not None)
    assert result == {0: pytest.approx(0.5), 1: pytest.approx(0.4)}
    assert group_shares([0.0], ["q"], keep=lambda kind: True) == {"q": None}


def test_average_ranks_match_brute_force_with_ties():
    values = [3.0, 1.0, 3.0, 2.0, 3.0, 0.5, 1.0]
    np.testing.assert_allclose(average_ranks(values), brute_force_ranks(values))


def test_spearman_against_the_textbook_formula_without_ties():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(12), rng.standard_normal(12)
    rank_x, rank_y = np.array(brute_force_ranks(list(x))), np.array(brute_force_ranks(list(y)))
    n = len(x)
    expected = 1 - 6 * ((rank_x - rank_y) ** 2).sum() / (n * (n**2 - 1))
    assert spearman(list(x), list(y)) == pytest.approx(expected, rel=1e-12)


def test_spearman_with_ties_is_pearson_of_average_ranks():
    x = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0]
    y = [2.0, 1.0, 4.0, 4.0, 6.0, 3.0]
    expected = np.corrcoef(brute_force_ranks(x), brute_force_ranks(y))[0, 1]
    assert spearman(x, y) == pytest.approx(expected, rel=1e-12)


def test_spearman_is_rank_only_and_bounded():
    x = [0.1, 0.5, 0.2, 0.9]
    assert spearman(x, [v**3 + 7 for v in x]) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    for perm in itertools.permutations(range(4)):
        assert -1.0 <= spearman(x, list(perm)) <= 1.0


def test_spearman_undefined_cases_are_null():
    assert spearman([None, 0.5], [0.1, 0.2]) is None
    assert spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None
    assert spearman([1.0], [2.0]) is None
