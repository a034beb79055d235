"""What every task is: `Example`, `Task`, the hash that assigns a prompt to its split, and the
strict final-answer check shared by the embedded families.

A prompt is plain text, or a conversation: (role, content) turns that the student tokenizer's chat
template renders (templates.py). Splits are disjoint by construction: a prompt's split is a pure
function of its text (a stable blake2b hash, never Python's salted `hash()`; a conversation hashes
as its JSON), so no sampler can leak a test prompt into training.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
# Hash bucket (0-9) -> split: 10% test, 10% val, 80% train.
TEST_BUCKET, VAL_BUCKET = 0, 1
ANSWER_MARK = "#"


Message = tuple[str, str]  # (role, content) of one chat turn
Conversation = tuple[Message, ...]  # hashable, so examples stay frozen and prompts dedupe
Prompt = str | Conversation


@dataclass(frozen=True)
class Example:
    prompt: Prompt
    answer: str
    # Worked chain of thought ending in the final answer; "" when unknown (JSONL without solution).
    solution: str


@dataclass(frozen=True)
class Task:
    name: str
    # (split, n, seed) -> n examples of that split; deterministic in (split, n, seed).
    sample: Callable[[str, int, int], list[Example]]
    # (completion with EOS stripped, answer) -> reward: True/False (1/0) from a verifier, or a
    # finite float from a python: reward function (tasks/verifiers.py); its mean is the accuracy.
    verify: Callable[[str, str], bool | float]
    # Sorted string of every character any prompt or solution can hold (char tokenizers use it).
    alphabet: str


def prompt_text(prompt: Prompt) -> str:
    """The text that stands for a prompt: itself, or a conversation's JSON [[role, content], ...]."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def split_of(prompt: Prompt) -> str:
    """The split a prompt belongs to, from a stable hash of its UTF-8 text."""
    digest = hashlib.blake2b(prompt_text(prompt).encode("utf-8"), digest_size=8).digest()
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
