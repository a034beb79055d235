"""Prompts that leave no room for rollout.max_new_tokens in the model's context are refused at load
time with their line, or dropped or cut from the left when task.too_long says so.

Run: .venv/bin/python -m pytest tests/train/test_prompt_fit.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from foresight.cli import main
from foresight.config_sections import TaskConfig
from foresight.models import load_tokenizer
from foresight.tasks import load_task
from foresight.train.rollout import encode_prompts, prompt_fit

REPO = Path(__file__).resolve().parents[2]
LIMIT = 30


@pytest.fixture
def long_task(tmp_path) -> Path:
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(300)]
    rows[7]["prompt"] = "12345678+" * 20 + "1="  # 183 characters, one token each
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path: Path, policy: str):
    tokenizer = load_tokenizer(REPO / "models" / "arith" / "base", "student")
    task = load_task(TaskConfig(name="jsonl", path=path), prompt_fit(tokenizer, LIMIT, policy))
    return tokenizer, task


def test_drop_leaves_the_long_row_out(long_task):
    _, task = load(long_task, "drop")
    prompts = [e.prompt for e in task.sample("all", 1000, 0)]
    assert len(prompts) == 299 and all(len(p) < 20 for p in prompts)


def test_truncate_left_keeps_the_longest_end_that_fits(long_task):
    tokenizer, task = load(long_task, "truncate_left")
    long = json.loads(long_task.read_text().splitlines()[7])["prompt"]
    cut = next(e.prompt for e in task.sample("all", 1000, 0) if len(e.prompt) > 20)
    assert long.endswith(cut)
    assert len(encode_prompts(tokenizer, [cut])[0]) == LIMIT  # BOS + 29 characters: as long as fits
    assert len(encode_prompts(tokenizer, [long[-len(cut) - 1 :]])[0]) == LIMIT + 1


def test_error_names_the_line_through_the_cli(monkeypatch, capsys, tmp_path, long_task):
    monkeypatch.chdir(REPO)
    args = ["train", "configs/tiny.yaml", "--set", "task.name=jsonl"]
    args += ["--set", f"task.path={long_task}", "--set", f"train.out_dir={tmp_path / 'run'}"]
    args += ["--set", "rollout.max_new_tokens=230"]  # 256-token context: 26 left for a prompt
    monkeypatch.setattr(sys, "argv", ["foresight", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "line 8" in err and "task.too_long" in err, err
    assert not (tmp_path / "run").exists()
