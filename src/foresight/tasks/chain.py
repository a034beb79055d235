"""Chain tasks: a start value and `difficulty` moves (operator, operand) applied left to right, with
every intermediate result written out. `arith` and `modchain` are two sets of `ChainRules`.

Prompts are drawn uniformly from every valid chain by ranking: `count_table` counts the valid
continuations of each running value, so each integer in [0, N) names exactly one chain. That gives
an exact space size N, uniform draws without generate-and-retry bias, and a full enumeration when a
held-out request is too large for rejection sampling to be safe.

Format, e.g. arith: prompt "17+5-3*2=", solution "17+5=22,22-3=19,19*2=38#38", answer "38".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from foresight.errors import UserError
from foresight.tasks.base import (
    ANSWER_MARK,
    Example,
    Task,
    check_split,
    split_of,
    split_rng,
    verify_marked_answer,
)

Move = tuple[str, int]  # (operator, operand), e.g. ("*", 2)
STEP_SEPARATOR = ","
# A held-out request above 1/40 of the space (a quarter of a 10% split) is served by enumerating
# the whole space: past that point rejection sampling slows down as duplicates pile up.
ENUMERATE_ABOVE_FRACTION = 40


@dataclass(frozen=True)
class ChainRules:
    name: str
    starts: tuple[int, ...]  # first number of the prompt
    moves: tuple[Move, ...]  # every (operator, operand) pair, in the fixed order used for ranking
    apply: Callable[[int, Move], int | None]  # next running value; None: move not allowed
    suffix: str  # written between the chain and '=' in the prompt (e.g. '%7'); may be ''


def reachable_values(rules: ChainRules) -> set[int]:
    """Every running value some chain of any length can reach (fixed point from the starts)."""
    values, frontier = set(rules.starts), set(rules.starts)
    while frontier:
        following = {rules.apply(value, move) for value in frontier for move in rules.moves}
        frontier = {value for value in following if value is not None} - values
        values |= frontier
    return values


def count_table(rules: ChainRules, difficulty: int) -> list[dict[int, int]]:
    """counts[k][v] = number of valid k-move chains that start from running value v."""
    values = reachable_values(rules)
    counts = [dict.fromkeys(values, 1)]
    for _ in range(difficulty):
        shorter = counts[-1]
        counts.append({value: _continuations(rules, value, shorter) for value in values})
    return counts


def _continuations(rules: ChainRules, value: int, shorter: dict[int, int]) -> int:
    following = (rules.apply(value, move) for move in rules.moves)
    return sum(shorter[after] for after in following if after is not None)


def unrank(rules: ChainRules, counts: list[dict[int, int]], index: int) -> tuple[int, list[Move]]:
    """The chain with rank `index` in [0, N): walk starts then moves, skipping whole subtrees."""
    difficulty = len(counts) - 1
    for start in rules.starts:
        if index < counts[difficulty][start]:
            break
        index -= counts[difficulty][start]
    value, chain = start, []
    for moves_left in range(difficulty, 0, -1):
        for move in rules.moves:
            after = rules.apply(value, move)
            if after is None:
                continue
            subtree = counts[moves_left - 1][after]
            if index < subtree:
                chain.append(move)
                value = after
                break
            index -= subtree
    return start, chain


def render(rules: ChainRules, start: int, chain: list[Move]) -> Example:
    """Prompt, worked solution and answer of one chain."""
    steps, value = [], start
    for operator, operand in chain:
        after = rules.apply(value, (operator, operand))
        steps.append(f"{value}{operator}{operand}={after}")
        value = after
    written_moves = "".join(f"{operator}{operand}" for operator, operand in chain)
    prompt = f"{start}{written_moves}{rules.suffix}="
    answer = str(value)
    return Example(prompt, answer, STEP_SEPARATOR.join(steps) + ANSWER_MARK + answer)


def chain_alphabet(rules: ChainRules) -> str:
    """Sorted characters of any prompt or solution, at any difficulty (so tokenizers match)."""
    numbers = reachable_values(rules) | {operand for _, operand in rules.moves}
    chars = set("".join(str(number) for number in numbers))
    chars |= {operator for operator, _ in rules.moves}
    chars |= set(rules.suffix + "=" + STEP_SEPARATOR + ANSWER_MARK)
    return "".join(sorted(chars))


def chain_task(rules: ChainRules, difficulty: int) -> Task:
    """A `Task` over all chains of `difficulty` moves, split by prompt hash."""
    if difficulty < 1:
        raise UserError(f"task.difficulty for '{rules.name}' is {difficulty}; set it to 1 or more.")
    counts = count_table(rules, difficulty)
    space = _space(rules, counts)

    def draw(rng: random.Random) -> Example:
        return render(rules, *unrank(rules, counts, rng.randrange(space)))

    def sample(split: str, n: int, seed: int) -> list[Example]:
        check_split(split)
        rng = split_rng(rules.name, split, seed)
        if split == "train":
            return _train_stream(draw, rng, n)
        label = f"'{rules.name}' at difficulty {difficulty}"
        if n * ENUMERATE_ABOVE_FRACTION > space:
            pool = [render(rules, *unrank(rules, counts, index)) for index in range(space)]
            return _held_out_from_pool(pool, split, n, rng, label)
        return _held_out_by_rejection(draw, split, n, rng, label)

    return Task(rules.name, sample, verify_marked_answer, chain_alphabet(rules))


def space_size(rules: ChainRules, difficulty: int) -> int:
    """Number of distinct prompts (all splits together) at this difficulty."""
    return _space(rules, count_table(rules, difficulty))


def _space(rules: ChainRules, counts: list[dict[int, int]]) -> int:
    return sum(counts[-1][start] for start in rules.starts)


def _train_stream(
    draw: Callable[[random.Random], Example], rng: random.Random, n: int
) -> list[Example]:
    # Train is an endless stream, so repeats are allowed; 80% of draws land in train.
    examples: list[Example] = []
    while len(examples) < n:
        example = draw(rng)
        if split_of(example.prompt) == "train":
            examples.append(example)
    return examples


def _held_out_by_rejection(
    draw: Callable[[random.Random], Example], split: str, n: int, rng: random.Random, label: str
) -> list[Example]:
    # n is at most 1/40 of the space, so ~10 draws per kept prompt; the cap only guards a hash
    # that starved this split, which would otherwise loop forever.
    max_draws = 100 * n + 10_000
    examples: dict[str, Example] = {}
    for _ in range(max_draws):
        if len(examples) == n:
            break
        example = draw(rng)
        if split_of(example.prompt) == split:
            examples.setdefault(example.prompt, example)
    if len(examples) < n:
        raise UserError(
            f"Task {label} gave only {len(examples)} distinct {split} prompts in {max_draws} "
            f"draws, fewer than the {n} requested; ask for fewer or raise task.difficulty."
        )
    return list(examples.values())


def _held_out_from_pool(
    pool: list[Example], split: str, n: int, rng: random.Random, label: str
) -> list[Example]:
    in_split = [example for example in pool if split_of(example.prompt) == split]
    if len(in_split) < n:
        raise UserError(
            f"Task {label} has only {len(in_split)} distinct {split} prompts, fewer than the "
            f"{n} requested; ask for fewer (e.g. lower eval.n_prompts) or raise task.difficulty."
        )
    return rng.sample(in_split, n)
