"""What every task is: `Example`, `Task`, the hash that assigns a prompt to its split, and the
strict final-answer check shared by the embedded families.

Splits are disjoint by construction: a prompt's split is a pure function of its text (a stable
blake2b hash, never Python's salted `hash()`), so no sampler can leak a test prompt into training.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
# Hash bucket (0-9) -> split: 10% test, 10% val, 80% train.
TEST_BUCKET, VAL_BUCKET = 0, 1
ANSWER_MARK = "#"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    # Worked chain of thought ending in the final answer; "" when unknown (JSONL without solution).
    solution: str


@dataclass(frozen=True)
class Task:
    name: str
    # (split, n, seed) -> n examples of that split; deterministic in (split, n, seed).
    sample: Callable[[str, int, int], list[Example]]
    # (completion with EOS stripped, answer) -> correct?
    verify: Callable[[str, str], bool]
    # Sorted string of every character any prompt or solution can hold (char tokenizers use it).
    alphabet: str


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, from a stable hash of its UTF-8 text."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 10
    if bucket == TEST_BUCKET:
        return "test"
    if bucket == VAL_BUCKET:
        return "val"
    return "train"


def split_rng(task_name: str, split: str, seed: int) -> random.Random:
    """A generator seeded from (task, split, seed); a str seed is hashed with sha512, so stable."""
    return random.Random(f"{task_name}/{split}/{seed}")


def check_split(split: str) -> None:
    """Reject a split name that is not train, val or test (a caller's bug, so no UserError)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def verify_marked_answer(completion: str, answer: str) -> bool:
    """Strict check: the text after the last '#' equals the answer exactly; no '#' is wrong."""
    if ANSWER_MARK not in completion:
        return False
    return completion.rsplit(ANSWER_MARK, 1)[1] == answer
