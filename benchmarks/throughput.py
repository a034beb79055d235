"""OPD throughput of the real `train_step` on a config (default: the demo's), split by phase.

Warms up, then times repeated steps and reports medians: completion tokens per second and the share
of a step spent in generation (student sampling), teacher scoring and the student update (forward,
backward, optimizer). Logging, evaluation and checkpoints are not part of the timed step.

Run: .venv/bin/python benchmarks/throughput.py [--config configs/demo.yaml] [--steps 10] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from foresight.cli import quiet_libraries
from foresight.config import load_config
from foresight.models import count_parameters
from foresight.opd.train import setup, train_step

PHASES = {
    "generation": "time/rollout_s",
    "teacher scoring": "time/teacher_s",
    "student update": "time/student_s",
}


def measure(config: Path, steps: int, warmup: int, overrides: list[str]) -> dict:
    cfg = load_config(config, overrides)
    trainer = setup(cfg)
    for step in range(1, warmup + 1):
        train_step(trainer, step)
    records = [train_step(trainer, step) for step in range(warmup + 1, warmup + steps + 1)]
    step_s = statistics.median(r["time/step_s"] for r in records)
    tokens = statistics.median(r["tokens/completion"] for r in records)
    phases = {name: statistics.median(r[key] for r in records) for name, key in PHASES.items()}
    return {
        "config": str(config),
        "overrides": overrides,
        "steps": steps,
        "warmup": warmup,
        "batch": cfg.rollout.prompts_per_step,
        "loss": cfg.loss.kind,
        "student_params": count_parameters(trainer.student),
        "median_step_s": step_s,
        "completion_tokens_per_s": tokens / step_s,
        "phase_s": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    quiet_libraries()
    result = measure(args.config, args.steps, args.warmup, args.overrides)
    print(
        f"config {result['config']}  batch {result['batch']}  loss {result['loss']}  "
        f"student {result['student_params']:,} params"
    )
    print(
        f"median step {result['median_step_s'] * 1000:.1f} ms   "
        f"{result['completion_tokens_per_s']:.0f} completion tokens/s"
    )
    print(f"{'phase':<18}{'median s':>10}{'share':>8}")
    total = sum(result["phase_s"].values())
    for name, seconds in result["phase_s"].items():
        print(f"{name:<18}{seconds:>10.4f}{seconds / total:>8.1%}")
    result |= {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "dtype": "float32",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
