"""Sampling and scoring alone, in CPU time: the two phases this toolkit's own code shapes most.

For a config (default: the demo's) it draws one step's prompts, then alternates, in one process:
  sample  -- `rollout.sample` of the batch, through the lean decoder or (--decoder library) the
             model's own forward, in float32 and under bfloat16 autocast
  score   -- `scoring.score_tokens` of that rollout under no_grad: the student's and the teacher's
             forward passes and LM heads, full-vocabulary reverse KL
and prints the medians (the first --warmup repetitions are not counted). Run it on another tree
with PYTHONPATH=<tree>/src to compare two versions of the code on the same machine.

Run: .venv/bin/python benchmarks/sample_score.py [--config configs/demo.yaml] [--set key=value ...]
     [--decoder lean|library] [--reps 8] [--warmup 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

import foresight.opd.rollout as rollout_module
from foresight.cli import quiet_libraries
from foresight.config import load_config
from foresight.opd.completions import step_examples
from foresight.opd.scoring import score_tokens
from foresight.opd.train import setup


def precision(name: str):
    if name == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--decoder", choices=["lean", "library"], default="lean")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    trainer = setup(cfg)
    trainer.student.eval()
    if args.decoder == "library":
        rollout_module.supports = lambda model: False  # every model through its own forward
    prompts = [example.prompt for example in step_examples(trainer.task, cfg, 1)]
    times: dict[str, list[float]] = {}
    for rep in range(args.warmup + args.reps):
        for dtype in ("float32", "bfloat16"):
            with precision(dtype):
                generator = torch.Generator().manual_seed(rep)
                started = time.process_time()
                rollout = rollout_module.sample(
                    trainer.student,
                    trainer.tokenizer,
                    prompts,
                    cfg.rollout.max_new_tokens,
                    cfg.rollout.temperature,
                    generator,
                )
                sampled = time.process_time()
                with torch.no_grad():
                    score_tokens(trainer.student, rollout, trainer.teacher, kind="reverse_kl")
                scored = time.process_time()
            if rep >= args.warmup:
                times.setdefault(f"sample {dtype}", []).append(sampled - started)
                times.setdefault(f"score {dtype}", []).append(scored - sampled)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"config {args.config} {' '.join(args.overrides)}; decoder {args.decoder}")
    print(f"batch {len(prompts)}, completion cap {cfg.rollout.max_new_tokens}, {args.reps} reps")
    for name, seconds in medians.items():
        print(f"{name:<16}{seconds * 1000:>10.1f} ms CPU")
    print(json.dumps({"decoder": args.decoder, "overrides": args.overrides, "ms": medians}))


if __name__ == "__main__":
    main()
