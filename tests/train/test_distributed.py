"""FSDP2 across 2 processes on the CPU (gloo), through the real CLI under torchrun.

What the tests prove:
  - test_two_processes_match_one: with the same global batch, `torchrun --nproc-per-node 2` gives
    the single process's loss, gradient norm, AdamW moments (proportional to the gradients, so the
    loss normalization over ranks is right elementwise: Adam's update alone is blind to a gradient
    scale) and weights, including EffOPD's extrapolation on the local shards (the undo path runs in
    the OPD smoke test). SFT on worked solutions makes the batch deterministic, so both runs see the same tokens.
    Tolerance: 1e-5 relative (to each tensor's largest entry) in float32. The two runs sum in a
    different order (two half-batches, then a reduce-scatter), ~1e-7 relative per operation, and
    AdamW's m/sqrt(v) amplifies that for entries whose gradient is near 0.
    The 2-process run stops after step 2 and resumes, so the rank-0 checkpoint (full weights,
    optimizer state in single-process keys, EffOPD anchor) is re-sharded on the way.
  - test_opd_smoke_and_analysis: on-policy OPD (each rank samples its own prompts) with a top-k
    divergence, EffOPD on the KL signal and evaluation with teacher KL runs 2 steps under torchrun,
    and `foresight analyze` reads its checkpoints. (Per-rank sampling differs from one process's, so
    this run is checked for running through, not against a single process.)

Run: .venv/bin/python -m pytest tests/train/test_distributed.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import micro_config
from safetensors.torch import load_file

from foresight.cli import main
from foresight.config import config_to_yaml
from foresight.log import read_metrics
from foresight.train.loop import train as train_in_process

TOLERANCE = 1e-5


def run(args: list[str], timeout: int = 120) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        args, check=False, capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def train(config: Path, processes: int, *extra: str) -> None:
    if processes == 1:
        run([sys.executable, "-m", "foresight", "train", str(config), *extra])
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        run(
            [
                *launcher,
                f"--nproc-per-node={processes}",
                "-m",
                "foresight",
                "train",
                str(config),
                *extra,
            ]
        )


def write(cfg, path: Path) -> Path:
    path.write_text(config_to_yaml(cfg))
    return path


def relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)) for k in a)


def final_state(run_dir: Path) -> tuple[dict, dict]:
    last = max((run_dir / "checkpoints").iterdir())
    weights = load_file(last / "model.safetensors")
    trainer_state = torch.load(last / "trainer_state.pt", weights_only=False)
    return weights, trainer_state


@pytest.mark.slow
def test_two_processes_match_one(micro_pair, tmp_path):
    student, _ = micro_pair
    cfg = micro_config(
        student,
        student,
        tmp_path / "two",
        model={"teacher": None},
        train={"method": "sft", "steps": 3, "checkpoint_every": 1},
        effopd={"enabled": True, "n_prompts": 8, "multipliers": [2.0]},
    )
    single = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"out_dir": tmp_path / "one"})}
    )
    train_in_process(single)
    config = write(cfg, tmp_path / "two.yaml")
    train(config, 2, "--set", "train.steps=2")
    train(config, 2, "--resume")  # re-shards the full checkpoint of step 2
    one, two = (read_metrics(c.train.out_dir) for c in (single, cfg))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 3]
    for one_step, two_step in zip(one[1:], two[1:]):
        for key in ("loss", "optim/grad_norm", "tokens/completion"):
            assert two_step[key] == pytest.approx(one_step[key], rel=TOLERANCE), key
    for one_step, two_step in zip(one[1:3], two[1:3]):  # EffOPD searched after steps 1 and 2
        assert two_step["effopd/delta_norm"] == pytest.approx(
            one_step["effopd/delta_norm"], rel=TOLERANCE
        )
        assert (
            two_step["effopd/accepted_multiplier"] == one_step["effopd/accepted_multiplier"] == 2.0
        )
    (weights_1, state_1), (weights_2, state_2) = (
        final_state(c.train.out_dir) for c in (single, cfg)
    )
    assert relative_gap(weights_2, weights_1) < TOLERANCE
    for moment in ("exp_avg", "exp_avg_sq"):
        by_index = [state["optimizer"]["state"] for state in (state_2, state_1)]
        moments = [{str(i): s[moment] for i, s in states.items()} for states in by_index]
        assert relative_gap(*moments) < TOLERANCE
    assert relative_gap(state_2["effopd"]["anchor"], state_1["effopd"]["anchor"]) < TOLERANCE
    last = max((cfg.train.out_dir / "checkpoints").iterdir())
    config_json = json.loads((last / "config.json").read_text())
    assert config_json["architectures"] == ["Qwen3ForCausalLM"]  # not FSDP2's FSDPQwen3ForCausalLM


@pytest.mark.slow
def test_opd_smoke_and_analysis(micro_pair, tmp_path, monkeypatch, capsys):
    student, teacher = micro_pair
    cfg = micro_config(
        student,
        teacher,
        tmp_path / "run",
        loss={"kind": "reverse_kl", "teacher_topk": 4},
        train={"steps": 2, "checkpoint_every": 1},
        effopd={"enabled": True, "n_prompts": 4, "signal": "kl", "multipliers": [1.0, 2.0]},
        eval={"every": 2, "teacher_kl": True},
    )
    train(write(cfg, tmp_path / "cfg.yaml"), 2)
    metrics = read_metrics(cfg.train.out_dir)
    assert [r["step"] for r in metrics] == [0, 1, 2]
    assert all("effopd/accepted_multiplier" in r and r["kl/mean"] > 0 for r in metrics[1:])
    assert "eval/kl_reverse" in metrics[2]
    out = tmp_path / "report"
    monkeypatch.setattr(
        sys, "argv", ["foresight", "analyze", str(cfg.train.out_dir), "--out", str(out)]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0 and (out / "report.html").is_file()
