"""`modchain`: a chain of + - * moves reduced modulo 7 after every move, each residue written out.

The prompt ends with the modulus ("%7") so it reads as what it means; the chain is evaluated left to
right with no precedence. Starts are 0-6 and operands 1-6 (no 0, which would make "*0" erase the
chain). Unlike `arith`, every move is always allowed, so the residues wrap around and a model cannot
shortcut by tracking magnitude. Difficulty is the number of moves (default 3).

    prompt   "4*3+5*2%7="
    solution "4*3=5,5+5=3,3*2=6#6"
    answer   "6"
"""

from __future__ import annotations

from foresight.tasks.base import Task
from foresight.tasks.chain import ChainRules, Move, chain_task

DEFAULT_DIFFICULTY = 3
MODULUS = 7


def apply_mod(value: int, move: Move) -> int:
    """The next residue; every move is allowed."""
    operator, operand = move
    if operator == "+":
        return (value + operand) % MODULUS
    if operator == "-":
        return (value - operand) % MODULUS
    return (value * operand) % MODULUS


MODCHAIN_RULES = ChainRules(
    name="modchain",
    starts=tuple(range(MODULUS)),
    moves=tuple((operator, operand) for operator in "+-*" for operand in range(1, MODULUS)),
    apply=apply_mod,
    suffix=f"%{MODULUS}",
)


def make_modchain(difficulty: int | None = None) -> Task:
    """The `modchain` task with `difficulty` moves per chain (None = 3)."""
    return chain_task(MODCHAIN_RULES, DEFAULT_DIFFICULTY if difficulty is None else difficulty)
