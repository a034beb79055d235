"""`arith`: chain arithmetic over small integers with every intermediate result written out.

The chain is evaluated strictly left to right, with no operator precedence: "2+3*4=" means
(2+3)*4 = 20. Starts are 1-20, operands 1-9 and operators + - *; a move is allowed only when the
running value stays within 0..99, so every number a tiny char model writes has at most two digits.
Difficulty is the number of moves (default 3).

    prompt   "17+5-3*2="
    solution "17+5=22,22-3=19,19*2=38#38"
    answer   "38"
"""

from __future__ import annotations

from foresight.tasks.base import Task
from foresight.tasks.chain import ChainRules, Move, chain_task

DEFAULT_DIFFICULTY = 3
MAX_VALUE = 99


def apply_arith(value: int, move: Move) -> int | None:
    """The next running value, or None when it would leave 0..MAX_VALUE."""
    operator, operand = move
    if operator == "+":
        after = value + operand
    elif operator == "-":
        after = value - operand
    else:
        after = value * operand
    return after if 0 <= after <= MAX_VALUE else None


ARITH_RULES = ChainRules(
    name="arith",
    starts=tuple(range(1, 21)),
    moves=tuple((operator, operand) for operator in "+-*" for operand in range(1, 10)),
    apply=apply_arith,
    suffix="",
)


def make_arith(difficulty: int | None = None) -> Task:
    """The `arith` task with `difficulty` moves per chain (None = 3)."""
    return chain_task(ARITH_RULES, DEFAULT_DIFFICULTY if difficulty is None else difficulty)
