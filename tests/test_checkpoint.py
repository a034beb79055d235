"""Checkpoints: atomic writes, run-folder safety, exact resume after a kill at a random step.

Run: .venv/bin/python -m pytest tests/test_checkpoint.py -q
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from builders import micro_config
from safetensors.torch import load_file

from foresight import checkpoint as checkpoint_module
from foresight.checkpoint import list_checkpoints, save_checkpoint
from foresight.config import config_to_yaml
from foresight.errors import UserError
from foresight.log import read_metrics
from foresight.train.loop import train
from foresight.train.setup import setup


def test_a_crash_during_save_leaves_no_checkpoint_that_looks_whole(
    micro_pair, tmp_path, monkeypatch
):
    cfg = micro_config(*micro_pair, tmp_path / "run")
    trainer = setup(cfg)
    save_checkpoint(tmp_path / "run", 1, trainer.student, trainer.tokenizer, cfg, {"optimizer": {}})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing trainer_state.pt")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(
            tmp_path / "run", 2, trainer.student, trainer.tokenizer, cfg, {"optimizer": {}}
        )
    leftovers = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert leftovers[0] == "step-000001" and leftovers[1].startswith("step-000002.tmp-")
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [1]


def test_a_new_run_never_writes_into_an_existing_run(micro_pair, tmp_path):
    cfg = micro_config(*micro_pair, tmp_path / "run", train={"steps": 1})
    train(cfg)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already holds files; pass --resume"):
        train(cfg)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


def test_resume_refuses_a_changed_config(micro_pair, tmp_path):
    train(micro_config(*micro_pair, tmp_path / "run", train={"steps": 1}))
    changed = micro_config(*micro_pair, tmp_path / "run", optim={"lr": 0.5})
    with pytest.raises(UserError, match="optim.lr"):
        train(changed, resume=True)


def test_resume_refuses_more_steps_under_a_cosine_schedule(micro_pair, tmp_path):
    """A cosine schedule's learning rates depend on train.steps: extending such a run would not
    continue the schedule it started. A constant schedule may be extended."""
    cosine = {"schedule": "cosine"}
    train(micro_config(*micro_pair, tmp_path / "cos", train={"steps": 1}, optim=cosine))
    longer = micro_config(*micro_pair, tmp_path / "cos", train={"steps": 2}, optim=cosine)
    with pytest.raises(UserError, match="train.steps changed from 1 to 2"):
        train(longer, resume=True)
    train(micro_config(*micro_pair, tmp_path / "flat", train={"steps": 1}))
    train(micro_config(*micro_pair, tmp_path / "flat", train={"steps": 2}), resume=True)
    assert [step for step, _ in list_checkpoints(tmp_path / "flat")][-1] == 2


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def test_killed_run_resumes_to_exactly_the_uninterrupted_weights(micro_pair, tmp_path):
    steps = 6
    # Bit for bit only on the same thread count: the reference trains in this process, the
    # interrupted run in a subprocess, so both name it (train.threads) rather than inherit it.
    sections = {"train": {"steps": steps, "threads": 1}, "eval": {"every": 2}}
    reference = micro_config(*micro_pair, tmp_path / "reference", **sections)
    train(reference)
    interrupted = micro_config(*micro_pair, tmp_path / "interrupted", **sections)
    config_file = tmp_path / "interrupted.yaml"
    config_file.write_text(config_to_yaml(interrupted))
    kill_after = random.Random().randint(1, steps - 2)  # a random step, reported on failure
    command = [sys.executable, "-m", "foresight", "train", str(config_file)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "interrupted" / "checkpoints" / f"step-{kill_after:06d}").exists():
        assert process.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.01)
    process.kill()
    process.wait()
    done = [s for s, _ in list_checkpoints(tmp_path / "interrupted")]
    assert done[-1] < steps, f"killed too late (after step {kill_after})"
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = (
        final_weights(tmp_path / "reference", steps),
        final_weights(tmp_path / "interrupted", steps),
    )
    for name in expected:
        assert torch.equal(expected[name], got[name]), (
            f"{name} differs after resume at {kill_after}"
        )
    metric_steps = [row["step"] for row in read_metrics(tmp_path / "interrupted")]
    assert metric_steps == list(range(steps + 1))  # no step logged twice, none missing
    assert (
        yaml.safe_load((tmp_path / "interrupted" / "config.yaml").read_text())["train"]["steps"]
        == steps
    )


def test_resume_before_the_first_checkpoint_starts_the_log_over(micro_pair, tmp_path):
    cfg = micro_config(*micro_pair, tmp_path / "run", train={"steps": 2, "checkpoint_every": 5})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(config_to_yaml(cfg))
    (tmp_path / "run" / "metrics.jsonl").write_text(
        '{"step": 0, "eval/accuracy": 0.5}\n{"step": 1, "lo'
    )
    train(cfg, resume=True)
    assert [row["step"] for row in read_metrics(tmp_path / "run")] == [0, 1, 2]
