"""`prepare` builds a base and a teacher from nothing: one SFT run, the teacher its last checkpoint,
the base the earliest checkpoint whose validation accuracy reaches a target.

Run: .venv/bin/python -m pytest tests/test_prepare.py -q
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from builders import run_cli

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.models import load_model, load_tokenizer
from foresight.prepare import (
    BASE_FRACTION,
    VAL_PROMPTS,
    base_target,
    choose_base,
    gap_warning,
    prepare_task,
)
from foresight.tasks import load_task
from foresight.train.evaluate import evaluate

# A validation curve with a dip (0.25 at step 30, then 0.15): the earliest reach wins, not the best.
CURVE = [(10, 0.0), (20, 0.1), (30, 0.25), (40, 0.15), (50, 0.6), (60, 0.95)]


def test_the_base_is_the_earliest_checkpoint_reaching_the_target():
    assert choose_base(CURVE, 0.2) == (30, 0.25)
    assert choose_base(CURVE, 0.25) == (30, 0.25)  # reaching it exactly counts
    assert choose_base(CURVE, 0.26) == (50, 0.6)  # past the dip
    assert choose_base(CURVE, 0.0) == (10, 0.0)


def test_the_default_target_is_a_fifth_of_the_teachers_accuracy():
    assert BASE_FRACTION == 0.2
    assert base_target(0.95, None) == pytest.approx(0.19)
    assert choose_base(CURVE, base_target(CURVE[-1][1], None)) == (30, 0.25)
    assert base_target(0.95, 0.5) == 0.5  # the user's target wins


@pytest.mark.parametrize("target", [0.7, 0.95, 1.0])
def test_no_checkpoint_before_the_teacher_reaching_the_target_is_one_sentence(target):
    # The teacher (step 60, 0.95) never counts as its own base.
    with pytest.raises(UserError) as refused:
        choose_base(CURVE, target)
    message = str(refused.value)
    assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message
    assert "0.600 at step 50" in message and "--teacher-steps" in message, message
    suggested = float(re.search(r"--base-accuracy (\d\.\d+) or lower", message).group(1))
    assert choose_base(CURVE, suggested) == (50, 0.6)  # the suggestion does work


def test_the_suggested_target_is_rounded_down_to_one_the_best_checkpoint_reaches():
    curve = [(1, 0.0), (2, 2 / 3), (3, 0.9)]  # 0.6667 when rounded, above 2/3
    with pytest.raises(UserError, match=r"--base-accuracy 0\.666 or lower"):
        choose_base(curve, 0.8)


def test_a_gap_under_30_points_warns_in_one_line_with_both_numbers_and_the_fix():
    assert gap_warning("arith", 0.166, 1.0) is None
    assert gap_warning("arith", 0.4, 0.7) is None  # exactly 30 points (0.7 - 0.4 < 0.3 in floats)
    line = gap_warning("mine", 0.45, 0.7)
    assert line.startswith("warning: mine:") and "\n" not in line, line
    assert "0.450" in line and "0.700" in line and "30 points" in line
    assert "--base-accuracy" in line and "--teacher-steps" in line


def test_impossible_requests_are_refused_before_any_training(tmp_path):
    task = TaskConfig(name="arith")
    with pytest.raises(UserError, match="--base-accuracy 1.5 is not a fraction"):
        prepare_task(task, tmp_path / "a", base_accuracy=1.5)
    with pytest.raises(UserError, match="--teacher-steps 1 leaves no checkpoint"):
        prepare_task(task, tmp_path / "a", teacher_steps=1)
    assert not (tmp_path / "a").exists()


def copy_task(folder) -> TaskConfig:
    """A task a fresh tiny model learns in about 7 SFT steps: 'A' or 'B', copied from the prompt."""
    data = folder / "copy.jsonl"
    rows = [{"prompt": f"{i}{c}=", "answer": c, "solution": c} for i in range(200) for c in "AB"]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return TaskConfig(name="jsonl", path=str(data))


def test_a_real_run_takes_the_earliest_checkpoint_reaching_the_target(tmp_path, capsys):
    task_cfg, out = copy_task(tmp_path), tmp_path / "models" / "copy"
    summary = prepare_task(task_cfg, out, base_accuracy=0.3, teacher_steps=10, max_new_tokens=4)
    curve = summary["val_curve"]
    assert [step for step, _ in curve] == list(range(1, 11))  # one a step: ceil(10 / 60)
    assert curve[0][1] < 0.3 < curve[-1][1]  # the choice is not trivial
    earliest = min(step for step, accuracy in curve[:-1] if accuracy >= 0.3)
    assert summary["base_step"] == earliest and summary["base_target"] == 0.3
    assert summary["base_val_accuracy"] == dict(curve)[earliest]
    assert summary["teacher_val_accuracy"] == curve[-1][1] and summary["teacher_steps"] == 10
    assert summary["task"] == "copy"  # the file's stem, not 'jsonl'
    written = json.loads((out / "prepare.json").read_text())
    assert written == summary
    assert set(written) >= {"base_step", "base_accuracy", "teacher_accuracy", "base_val_accuracy"}
    # The base folder holds the checkpoint that was scored: its validation accuracy is the same.
    task, threads = load_task(task_cfg), torch.get_num_threads()
    torch.set_num_threads(1)  # as the run evaluated it: same reduction order, same greedy tokens
    try:
        rescored = evaluate(
            load_model(out / "base", "base"),
            load_tokenizer(out / "base", "base"),
            task,
            "val",
            VAL_PROMPTS,
            4,
            256,
            sampled=False,
        )["eval/accuracy"]
    finally:
        torch.set_num_threads(threads)
    assert rescored == summary["base_val_accuracy"]
    vocab = json.loads((out / "teacher" / "tokenizer.json").read_text())["model"]["vocab"]
    assert set("0123456789AB=") <= set(vocab)
    assert "warning" not in capsys.readouterr().err  # teacher 1.0, base about 0.3


def test_cli_warns_when_base_and_teacher_end_close(monkeypatch, capsys, tmp_path):
    copy_task(tmp_path)
    args = ["prepare", "--task", str(tmp_path / "copy.jsonl"), "--out", str(tmp_path / "models")]
    code, out, err = run_cli(
        monkeypatch, capsys, *args, "--teacher-steps", "10", "--base-accuracy", "0.9"
    )
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "30 points" in warnings[0], err
    summary = json.loads((tmp_path / "models" / "copy" / "prepare.json").read_text())
    assert f"{summary['base_accuracy']:.3f}" in warnings[0]
    assert f"{summary['teacher_accuracy']:.3f}" in warnings[0]
    assert out.startswith(f"copy: base step {summary['base_step']} ("), out


def test_cli_exits_2_naming_the_accuracy_reached_when_no_checkpoint_reaches_it(
    monkeypatch, capsys, tmp_path
):
    copy_task(tmp_path)
    args = ["prepare", "--task", str(tmp_path / "copy.jsonl"), "--out", str(tmp_path / "models")]
    code, _, err = run_cli(
        monkeypatch, capsys, *args, "--teacher-steps", "3", "--base-accuracy", "0.99"
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "reached validation accuracy 0.990" in errors[0] and "the best reached" in errors[0]
    assert "Traceback" not in err
    assert list((tmp_path / "models").iterdir()) == []  # no models, no scratch folder left


def test_jsonl_task_without_solutions_is_refused(tmp_path):
    data = tmp_path / "task.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "answer": "{i}"}}\n' for i in range(300)))
    with pytest.raises(UserError, match="solution"):
        prepare_task(TaskConfig(name="jsonl", path=str(data)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_short_prepare_run_beats_chance(tmp_path):
    task_cfg = TaskConfig(name="arith", difficulty=2)
    summary = prepare_task(task_cfg, tmp_path / "arith", teacher_steps=100)
    answers = [e.answer for e in load_task(task_cfg).sample("test", 500, 0)]
    majority_rate = Counter(answers).most_common(1)[0][1] / len(answers)  # best constant guess
    assert summary["teacher_accuracy"] > 1.5 * majority_rate, summary
    for role in ("base", "teacher"):
        assert (tmp_path / "arith" / role / "model.safetensors").is_file()
        assert (tmp_path / "arith" / role / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "arith" / "prepare.json").read_text()) == summary
