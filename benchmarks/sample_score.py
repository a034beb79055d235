"""Sampling and scoring alone, in CPU time: the two phases this toolkit's own code shapes most.

For a config (default: the demo's) it draws one step's prompts, then alternates, in one process:
  sample  -- `rollout.sample` of the batch, through the lean decoder (its compiled one-token step,
             opd/decode_step.cpp, where it applies), its Python step only (--decoder python), or
             (--decoder library) the model's own forward, in float32 and under bfloat16 autocast
  score   -- `scoring.score_tokens` of that rollout under no_grad: the student's and the teacher's
             forward passes and LM heads, full-vocabulary reverse KL
and prints the medians (the first --warmup repetitions are not counted). Run it on another tree
with PYTHONPATH=<tree>/src to compare two versions of the code on the same machine.

--against <tree>/src compares the lean decoder of another tree inside this process instead: every
repetition samples through both decoders in turn, the same prompts and random stream. Differences
of a few percent, which separate processes on a shared machine cannot resolve, show there ("sample
<dtype> against" is the other tree's). --versus-python does the same with this tree's Python step
("sample <dtype> python"). It prints how many repetitions drew the same tokens on both. The
compiled step orders its sums differently: its float32 logits differ from the Python step's by
~1e-6 (a draw flips only where the uniform number falls that close to a boundary), its bfloat16
ones by up to one bfloat16 rounding, which flips draws more often.

Run: .venv/bin/python benchmarks/sample_score.py [--config configs/demo.yaml] [--set key=value ...]
     [--decoder lean|python|library] [--against <tree>/src] [--versus-python] [--reps 8]
     [--warmup 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import statistics
import sys
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


def other_lean_decoder(source: Path):
    """The `LeanDecoder` class of another tree's `foresight/opd/fast_decode.py`, loaded as a
    separate module (it imports only torch, transformers and peft)."""
    spec = importlib.util.spec_from_file_location(
        "against_fast_decode", source / "foresight" / "opd" / "fast_decode.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.LeanDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--decoder", choices=["lean", "python", "library"], default="lean")
    parser.add_argument("--against", type=Path, help="another tree's src folder")
    parser.add_argument("--versus-python", action="store_true", help="also the Python step")
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
    lean = rollout_module.LeanDecoder
    decoders = {"": functools.partial(lean, compiled=args.decoder != "python")}
    if args.against is not None:
        decoders[" against"] = other_lean_decoder(args.against)
    if args.versus_python:
        decoders[" python"] = functools.partial(lean, compiled=False)
    same: dict[str, int] = {}
    times: dict[str, list[float]] = {}

    def sample(seed: int) -> rollout_module.Rollout:
        return rollout_module.sample(
            trainer.student,
            trainer.tokenizer,
            prompts,
            cfg.rollout.max_new_tokens,
            cfg.rollout.temperature,
            torch.Generator().manual_seed(seed),
        )

    for rep in range(args.warmup + args.reps):
        for dtype in ("float32", "bfloat16"):
            with precision(dtype):
                rollouts = []
                for suffix, decoder in decoders.items():
                    rollout_module.LeanDecoder = decoder
                    started = time.process_time()
                    rollouts.append(sample(rep))
                    if rep >= args.warmup:
                        elapsed = time.process_time() - started
                        times.setdefault(f"sample {dtype}{suffix}", []).append(elapsed)
                if rep >= args.warmup:
                    same[dtype] = same.get(dtype, 0) + all(
                        torch.equal(r.ids, rollouts[0].ids) for r in rollouts
                    )
                started = time.process_time()
                with torch.no_grad():
                    score_tokens(trainer.student, rollouts[0], trainer.teacher, kind="reverse_kl")
                if rep >= args.warmup:
                    times.setdefault(f"score {dtype}", []).append(time.process_time() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"config {args.config} {' '.join(args.overrides)}; decoder {args.decoder}")
    print(f"batch {len(prompts)}, completion cap {cfg.rollout.max_new_tokens}, {args.reps} reps")
    for name, seconds in medians.items():
        print(f"{name:<24}{seconds * 1000:>10.1f} ms CPU")
    if len(decoders) > 1:
        print("same tokens from every decoder:", {d: f"{n}/{args.reps}" for d, n in same.items()})
    print(
        json.dumps(
            {"decoder": args.decoder, "overrides": args.overrides, "ms": medians, "same": same}
        )
    )


if __name__ == "__main__":
    main()
