"""Tests of the embedded task families (arith, modchain) and `load_task`.

Run: .venv/bin/python -m pytest tests/tasks -q
"""

from __future__ import annotations

import re

import pytest

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.tasks import TASKS, load_task
from foresight.tasks.base import split_of

FAMILIES = sorted(TASKS)
STEP = re.compile(r"(\d+)([+\-*])(\d+)=(\d+)")


def reference_steps(name: str, prompt: str) -> list[tuple[int, str, int, int]]:
    """Brute-force left-to-right evaluation, independent of the generator: (value, op, x, next)."""
    body = prompt.removesuffix("=")
    modulus = None
    if name == "modchain":
        body, modulus_text = body.split("%")
        modulus = int(modulus_text)
    numbers = [int(text) for text in re.findall(r"\d+", body)]
    operators = re.findall(r"[+\-*]", body)
    steps, value = [], numbers[0]
    for operator, operand in zip(operators, numbers[1:], strict=True):
        after = {"+": value + operand, "-": value - operand, "*": value * operand}[operator]
        if modulus is None:
            assert 0 <= after <= 99 and 1 <= operand <= 9
        else:
            after %= modulus
        steps.append((value, operator, operand, after))
        value = after
    return steps


@pytest.mark.parametrize("name", FAMILIES)
def test_splits_are_disjoint_and_match_the_hash(name):
    task = TASKS[name](None)
    prompts = {
        split: {example.prompt for example in task.sample(split, n, seed=0)}
        for split, n in (("train", 4000), ("val", 1000), ("test", 1000))
    }
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    for split, members in prompts.items():
        assert {split_of(prompt) for prompt in members} == {split}


@pytest.mark.parametrize("name", FAMILIES)
def test_sampling_is_deterministic_and_held_out_is_distinct(name):
    task, again = TASKS[name](None), TASKS[name](None)
    for split in ("train", "val", "test"):
        assert task.sample(split, 300, 7) == again.sample(split, 300, 7)
    assert task.sample("train", 64, 1) != task.sample("train", 64, 2)
    for split in ("val", "test"):
        prompts = [example.prompt for example in task.sample(split, 500, 0)]
        assert len(set(prompts)) == 500


@pytest.mark.parametrize("name", FAMILIES)
def test_solutions_match_a_reference_and_verify(name):
    task = TASKS[name](None)
    for example in task.sample("train", 500, 3) + task.sample("test", 200, 0):
        steps = reference_steps(name, example.prompt)
        written = ",".join(f"{v}{op}{x}={after}" for v, op, x, after in steps)
        assert example.answer == str(steps[-1][3])
        assert example.solution == f"{written}#{example.answer}"
        assert task.verify(example.solution, example.answer)


@pytest.mark.parametrize("name", FAMILIES)
def test_wrong_or_malformed_completions_fail(name):
    task = TASKS[name](None)
    example = task.sample("val", 1, 0)[0]
    body, answer = example.solution.rsplit("#", 1)
    wrong = str((int(answer) + 1) % 7)
    for completion in (
        body,  # no '#'
        answer,  # bare answer, no '#'
        f"{body}#{answer}x",  # extra char
        f"{body}#{answer} ",  # trailing space
        f"{body}#{answer}\n",
        f"{body}#{answer}0",
        f"{body}#{wrong}",
        f"{body}#",
        "",
    ):
        assert not task.verify(completion, example.answer), completion
    assert task.verify(f"garbage#{answer}", example.answer)  # only the final answer is graded


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("difficulty", [1, 2, 5])
def test_difficulty_is_the_number_of_steps(name, difficulty):
    task = TASKS[name](difficulty)
    for example in task.sample("train", 50, 0):
        assert len(example.solution.split("#")[0].split(",")) == difficulty
        assert len(re.findall(r"[+\-*]", example.prompt)) == difficulty
        assert task.verify(example.solution, example.answer)


@pytest.mark.parametrize("name", FAMILIES)
def test_alphabet_covers_every_char_and_default_lengths_are_short(name):
    task = TASKS[name](None)
    assert task.alphabet == "".join(sorted(set(task.alphabet)))
    for difficulty in (1, 3, 6):
        harder = TASKS[name](difficulty)
        assert harder.alphabet == task.alphabet
        for example in harder.sample("train", 300, 0):
            assert set(example.prompt + example.solution) <= set(task.alphabet)
    for example in task.sample("train", 1000, 0):
        assert len(example.prompt) <= 24 and len(example.solution) <= 48


@pytest.mark.parametrize("name", FAMILIES)
def test_small_space_enumerates_and_too_large_a_request_raises(name):
    task = TASKS[name](1)
    val = task.sample("val", 5, 0)
    assert len({example.prompt for example in val}) == 5
    assert {split_of(example.prompt) for example in val} == {"val"}
    assert task.sample("val", 5, 0) == val
    with pytest.raises(UserError, match="only .* distinct test prompts"):
        task.sample("test", 500, 0)


def test_bad_difficulty_raises():
    with pytest.raises(UserError, match="difficulty"):
        TASKS["arith"](0)


def test_load_task_builds_each_family_at_its_difficulty():
    for name in FAMILIES:
        task = load_task(TaskConfig(name=name, difficulty=2))
        assert task.name == name
        example = task.sample("train", 1, 0)[0]
        assert example.solution.count(",") == 1


def test_load_task_rejects_bad_names_and_options(tmp_path):
    with pytest.raises(UserError, match="arith, modchain, jsonl"):
        load_task(TaskConfig(name="arithmetic"))
    with pytest.raises(UserError, match="verifier"):
        load_task(TaskConfig(name="arith", verifier="number"))
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "answer": 1}\n')
    with pytest.raises(UserError, match="difficulty"):
        load_task(TaskConfig(name="jsonl", path=path, difficulty=2))
