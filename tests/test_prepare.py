"""`prepare` builds a base and a teacher from nothing; a short run already beats chance.

Run: .venv/bin/python -m pytest tests/test_prepare.py -q
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from foresight.config import TaskConfig
from foresight.errors import UserError
from foresight.prepare import prepare_task
from foresight.tasks import load_task


@pytest.mark.slow
def test_short_prepare_run_beats_chance(tmp_path):
    task_cfg = TaskConfig(name="arith", difficulty=2)
    summary = prepare_task(task_cfg, tmp_path / "arith", base_steps=10, teacher_steps=100)
    answers = [e.answer for e in load_task(task_cfg).sample("test", 500, 0)]
    majority_rate = Counter(answers).most_common(1)[0][1] / len(answers)  # best constant guess
    assert summary["teacher_accuracy"] > 1.5 * majority_rate, summary
    for role in ("base", "teacher"):
        assert (tmp_path / "arith" / role / "model.safetensors").is_file()
        assert (tmp_path / "arith" / role / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "arith" / "prepare.json").read_text()) == summary


def test_jsonl_task_without_solutions_is_refused(tmp_path):
    data = tmp_path / "task.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "answer": "{i}"}}\n' for i in range(300)))
    with pytest.raises(UserError, match="solution"):
        prepare_task(TaskConfig(name="jsonl", path=data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_works_on_a_users_jsonl_task(tmp_path):
    task = load_task(TaskConfig(name="modchain"))
    examples = [e for split in ("train", "val", "test") for e in task.sample(split, 100, 3)]
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": e.prompt, "answer": e.answer, "solution": e.solution}) + "\n"
            for e in examples
        )
    )
    summary = prepare_task(
        TaskConfig(name="jsonl", path=data), tmp_path / "mine", base_steps=2, teacher_steps=4
    )
    assert summary["task"] == "jsonl" and 0.0 <= summary["teacher_accuracy"] <= 1.0
    vocab = json.loads((tmp_path / "mine" / "teacher" / "tokenizer.json").read_text())["model"][
        "vocab"
    ]
    assert set("".join(e.prompt + e.solution for e in examples)) <= set(vocab)
