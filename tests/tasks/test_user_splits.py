"""A user's own splits: a `split` field on every row, or one file per split; `foresight eval --task
FILE` scores every row by default and says how many.

Run: .venv/bin/python -m pytest tests/tasks/test_user_splits.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from foresight.cli import main
from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.tasks import load_task

REPO = Path(__file__).resolve().parents[2]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(n: int, start: int = 0, **extra) -> list[dict]:
    return [{"prompt": f"{i}+1=", "answer": str(i + 1), **extra} for i in range(start, start + n)]


def test_a_split_field_decides_every_rows_split(tmp_path):
    data = rows(5, split="train") + rows(2, 5, split="val") + rows(3, 7, split="test")
    task = load_task(TaskConfig(name="jsonl", path=write_rows(tmp_path / "t.jsonl", data)))
    assert [e.prompt for e in task.sample("val", 100, 0)] == ["5+1=", "6+1="]
    assert [e.prompt for e in task.sample("test", 100, 0)] == ["7+1=", "8+1=", "9+1="]
    assert {e.prompt for e in task.sample("train", 50, 0)} == {f"{i}+1=" for i in range(5)}
    assert len(task.sample("all", 100, 0)) == 10


def test_split_files_give_val_and_test(tmp_path):
    cfg = TaskConfig(
        name="jsonl",
        path=write_rows(tmp_path / "train.jsonl", rows(4)),
        val_path=write_rows(tmp_path / "val.jsonl", rows(2, 10)),
        test_path=write_rows(tmp_path / "test.jsonl", rows(3, 20)),
    )
    task = load_task(cfg)
    assert [e.prompt for e in task.sample("test", 100, 0)] == ["20+1=", "21+1=", "22+1="]
    assert [e.prompt for e in task.sample("val", 100, 0)] == ["10+1=", "11+1="]
    assert {e.prompt for e in task.sample("train", 40, 0)} == {f"{i}+1=" for i in range(4)}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (rows(3, split="train") + rows(1, 3), "has no 'split'"),
        (rows(3, split="dev"), "split 'dev'"),
        (rows(3, split="train") + rows(1, 3, split="val"), "'test' split"),
    ],
)
def test_bad_split_fields_are_refused_naming_the_line(tmp_path, data, words):
    with pytest.raises(UserError, match=words):
        load_task(TaskConfig(name="jsonl", path=write_rows(tmp_path / "t.jsonl", data)))


def test_val_path_without_test_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="go together"):
        TaskConfig(name="jsonl", path=tmp_path / "t.jsonl", val_path=tmp_path / "v.jsonl")


def test_eval_scores_every_row_of_a_file_and_says_so(monkeypatch, capsys, tmp_path):
    data = write_rows(tmp_path / "mine.jsonl", rows(300))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(
        sys, "argv", ["foresight", "eval", "models/arith/teacher", "--task", str(data), "--json"]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["eval/prompts"] == 300
    assert "scored 300 prompts" in captured.err
