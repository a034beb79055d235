"""Tests of the chain machinery: ranking covers every valid chain exactly once.

Run: .venv/bin/python -m pytest tests/tasks -q
"""

from __future__ import annotations

import itertools

import pytest

from foresight.tasks.arith import ARITH_RULES
from foresight.tasks.chain import count_table, render, space_size, unrank
from foresight.tasks.modchain import MODCHAIN_RULES


def brute_force_prompts(rules, difficulty: int) -> set[str]:
    """Every valid chain by trying all move sequences from every start."""
    prompts = set()
    for start in rules.starts:
        for chain in itertools.product(rules.moves, repeat=difficulty):
            value = start
            for move in chain:
                value = rules.apply(value, move)
                if value is None:
                    break
            else:
                prompts.add(render(rules, start, list(chain)).prompt)
    return prompts


@pytest.mark.parametrize("rules", [ARITH_RULES, MODCHAIN_RULES], ids=lambda rules: rules.name)
@pytest.mark.parametrize("difficulty", [1, 2])
def test_unrank_is_a_bijection_onto_all_valid_chains(rules, difficulty):
    counts = count_table(rules, difficulty)
    size = space_size(rules, difficulty)
    ranked = [render(rules, *unrank(rules, counts, index)).prompt for index in range(size)]
    assert len(set(ranked)) == size
    assert set(ranked) == brute_force_prompts(rules, difficulty)


def test_default_spaces_hold_thousands_per_split():
    assert space_size(ARITH_RULES, 3) == 240_913
    assert space_size(MODCHAIN_RULES, 3) == 7 * 18**3
