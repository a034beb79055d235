"""Rewards: a float reward function (task.verifier: python:module:function) drives GRPO with exactly
its values, reward/mean logs the mean reward of each step's sampled completions (rl and opd), and
a reward that is not a finite number stops the run with exit 2 and one sentence.

Run: .venv/bin/python -m pytest tests/train/test_float_reward.py -q
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from builders import micro_config, run_cli

from foresight.config import config_to_yaml
from foresight.log import read_metrics
from foresight.tasks import TASKS
from foresight.train import loop
from foresight.train.rollout import decode_completions

REWARDS = '''
def closeness(completion, answer):
    """1 / (1 + |len(completion) - len(answer)|): a float in (0, 1] that varies between samples."""
    return 1.0 / (1.0 + abs(len(completion) - len(answer)))


def broken(completion, answer):
    return float("nan")
'''


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    """The reward functions as an importable module `float_rewards` (its folder on sys.path)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "float_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "float_rewards", raising=False)
    return importlib.import_module("float_rewards")


@pytest.fixture
def arith_file(tmp_path) -> Path:
    """arith prompts and answers as a user JSONL file (the micro models' alphabet covers them)."""
    arith = TASKS["arith"](None)  # prompts of every split, so the file's hash split has all three
    examples = [e for split in ("train", "val", "test") for e in arith.sample(split, 30, 0)]
    path = tmp_path / "arith.jsonl"
    lines = (json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in examples)
    path.write_text("".join(lines))
    return path


def record_batches(monkeypatch) -> list:
    """Every step's (examples, batch, tokenizer), as `train_step` got them."""
    seen, student_batch = [], loop.student_batch

    def spy(student, tokenizer, task, examples, cfg, seed):
        batch = student_batch(student, tokenizer, task, examples, cfg, seed)
        seen.append((examples, batch, tokenizer))
        return batch

    monkeypatch.setattr(loop, "student_batch", spy)
    return seen


def test_grpo_trains_on_the_float_reward_functions_values(
    micro_pair, rewards_module, arith_file, tmp_path, monkeypatch
):
    seen = record_batches(monkeypatch)
    reward = "python:float_rewards:closeness"
    cfg = micro_config(
        *micro_pair,
        tmp_path / "run",
        task={"name": "jsonl", "path": str(arith_file), "verifier": reward},
        train={"method": "rl"},
        rollout={"prompts_per_step": 4, "group_size": 4},
    )
    loop.train(cfg)
    assert len(seen) == 2
    logged = [row["reward/mean"] for row in read_metrics(tmp_path / "run") if "loss" in row]
    for (examples, batch, tokenizer), mean in zip(seen, logged, strict=True):
        completions = decode_completions(tokenizer, batch.rollout)
        answers = [e.answer for e in examples for _ in range(4)]  # rows grouped by prompt
        direct = [rewards_module.closeness(c, a) for c, a in zip(completions, answers)]
        # The function's own values, as the float32 tensor the step holds them in.
        assert torch.equal(batch.rewards, torch.tensor(direct))
        assert len(set(direct)) > 1  # not a constant: GRPO's advantages were not all zero
        assert mean == float(batch.rewards.double().mean())
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def test_opd_logs_the_mean_verifier_reward_of_its_samples(micro_pair, tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    loop.train(micro_config(*micro_pair, tmp_path / "run"))
    logged = [row["reward/mean"] for row in read_metrics(tmp_path / "run") if "loss" in row]
    task = TASKS["arith"](None)
    for (examples, batch, tokenizer), mean in zip(seen, logged, strict=True):
        completions = decode_completions(tokenizer, batch.rollout)
        verified = [task.verify(c, e.answer) for c, e in zip(completions, examples)]
        assert mean == sum(verified) / len(verified)  # a k/8 fraction: exact in float64


def test_a_reward_that_is_not_a_finite_number_exits_2(
    micro_pair, rewards_module, arith_file, tmp_path, monkeypatch, capsys
):
    task = {"name": "jsonl", "path": str(arith_file), "verifier": "python:float_rewards:broken"}
    rl = {"train": {"method": "rl"}, "rollout": {"group_size": 2}}
    cfg = micro_config(*micro_pair, tmp_path / "run", task=task, **rl)
    config = tmp_path / "config.yaml"
    config.write_text(config_to_yaml(cfg))
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config))
    assert code == 2
    assert err.strip() == (
        "error: task.verifier 'python:float_rewards:broken' returned nan for a completion, not a "
        "finite number; return a bool or a finite float."
    )
