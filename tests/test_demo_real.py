"""`foresight demo --real`: its prompt set, verifier and told task, and the missing-model error.

The demo itself trains SmolLM2-135M-Instruct for minutes, so it is measured by hand (README), not
run here; tests/test_lora.py runs the same path (import, LoRA student, privileged teacher, OPD
steps, analyze) for two short steps.
"""

from __future__ import annotations

import json
import sys

import pytest

from foresight.cli import main
from foresight.config_sections import TaskConfig
from foresight.demo_real import (
    BEHAVIOR,
    TEST_PROMPTS,
    starts_with_greeting,
    told,
    write_prompts,
)
from foresight.tasks import load_task


def test_the_verifier_checks_the_opening_only():
    assert starts_with_greeting("Hello! The sun is a star.", BEHAVIOR)
    assert starts_with_greeting("\n Hello! hi", BEHAVIOR)
    assert not starts_with_greeting("The sun says Hello!", BEHAVIOR)
    assert not starts_with_greeting("Hello, the sun", BEHAVIOR)
    assert not starts_with_greeting("", BEHAVIOR)


def test_prompts_give_enough_held_out_questions_and_the_teacher_sees_them_told(tmp_path):
    path = write_prompts(tmp_path / "prompts.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({line["prompt"] for line in lines}) == len(lines)  # no duplicates
    task = load_task(
        TaskConfig(
            name="jsonl", path=path, verifier="python:foresight.demo_real:starts_with_greeting"
        )
    )
    test = task.sample("test", TEST_PROMPTS, 0)
    assert len(test) == TEST_PROMPTS
    train_prompts = {e.prompt for e in task.sample("train", 2000, 0)}
    assert not train_prompts & {e.prompt for e in test}
    template = "{prompt} Begin your reply with 'Hello!'"
    told_test = told(task, template).sample("test", TEST_PROMPTS, 0)
    assert [e.prompt for e in told_test] == [template.replace("{prompt}", e.prompt) for e in test]
    assert task.verify("Hello! Sure.", test[0].answer)


def test_a_missing_model_folder_exits_2_naming_the_make_target(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["foresight", "demo", "--real"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "make models/smollm2-135m-instruct" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written before the check
