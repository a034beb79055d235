"""Where an OPD step's time goes, and how far each phase is from this machine's matrix-multiply rate.

Runs the real `train_step` on a config (default: the demo's), warms up, then times repeated steps and
reports medians per phase: generation (student sampling), teacher scoring, student forward/backward
(with clipping and the lr schedule), optimizer step, and overhead (the rest of the step). In the same
run it measures the machine's rate on a large square `torch.mm` in float32 and in bfloat16, with the
same thread count, and states each phase's achieved FLOP/s as a share of it.

FLOPs are model FLOPs of the useful work (real tokens only; padding and activation recomputation are
not counted), with N = the weights of every `nn.Linear` (attention and MLP projections, LM head; the
embedding lookup is free), L layers, d = heads x head_dim, and a row of n real tokens:
  forward of a row          2·N·n + 4·L·d·n(n+1)/2      (matmuls; causal QKᵀ and AV)
  teacher scoring           forward of every row under the teacher
  student forward/backward  3 x forward of every row under the student (backward = 2 x forward)
  generation                ≈ forward of every row under the student (prefill, then one token at a
                            time over the cached context; counts the LM head on prompt positions)
  optimizer                 not matmul work; reported in seconds only

Run: .venv/bin/python benchmarks/throughput.py [--config configs/demo.yaml] [--steps 8] [--warmup 2]
     [--threads 1] [--set model.dtype=bfloat16 --set model.teacher_dtype=bfloat16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from foresight.cli import quiet_libraries
from foresight.config import load_config
from foresight.models import count_parameters
from foresight.opd.train import setup, train_step

PHASES = ("generation", "teacher scoring", "student fwd/bwd", "optimizer", "overhead")


def mm_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Median FLOP/s of a (size x size) @ (size x size) product in `dtype`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: kernel selection, page faults
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


def shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(N matmul weights, L layers, d = heads x head_dim) of a decoder."""
    config = model.config.get_text_config(decoder=True)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return n_linear, config.num_hidden_layers, config.num_attention_heads * head_dim


def forward_flops(model: torch.nn.Module, lengths: torch.Tensor) -> float:
    """Model FLOPs of one forward pass over rows of `lengths` real tokens (causal attention)."""
    n_linear, layers, width = shape(model)
    lengths = lengths.double()
    return float((2 * n_linear * lengths + 4 * layers * width * lengths * (lengths + 1) / 2).sum())


class OptimizerTimer:
    """Wraps `optimizer.step` to time it; everything else passes through."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.seconds = optimizer, 0.0
        self.original_step = optimizer.step
        optimizer.step = self.step

    def step(self, *args, **kwargs):
        started = time.perf_counter()
        result = self.original_step(*args, **kwargs)
        self.seconds = time.perf_counter() - started
        return result


def timed_step(trainer, step: int, timer: OptimizerTimer) -> dict:
    """One `train_step`, its phases in seconds, and the real-token lengths of its rollout's rows."""
    lengths = {}
    probe = RolloutProbe(lengths)
    started = time.perf_counter()
    stats = train_step(trainer, step)
    wall = time.perf_counter() - started
    probe.restore()
    phases = {
        "generation": stats["time/rollout_s"],
        "teacher scoring": stats["time/teacher_s"],
        "student fwd/bwd": stats["time/student_s"] - timer.seconds,
        "optimizer": timer.seconds,
    }
    phases["overhead"] = wall - sum(phases.values())
    return {"wall": wall, "phases": phases, "tokens": stats["tokens/completion"], **lengths}


class RolloutProbe:
    """Records the step's rollout (row lengths) by wrapping train.make_batch for one call."""

    def __init__(self, out: dict) -> None:
        import foresight.opd.train as train_module

        self.module, self.original = train_module, train_module.make_batch

        def probe(t, step):
            batch = self.original(t, step)
            out["row_lengths"] = batch.rollout.attention_mask.sum(1)  # (B,)
            return batch

        train_module.make_batch = probe

    def restore(self) -> None:
        self.module.make_batch = self.original


def measure(config: Path, steps: int, warmup: int, overrides: list[str]) -> dict:
    cfg = load_config(config, overrides)
    trainer = setup(cfg)
    timer = OptimizerTimer(trainer.optimizer)
    for step in range(1, warmup + 1):
        train_step(trainer, step)
    records = [timed_step(trainer, step, timer) for step in range(warmup + 1, warmup + steps + 1)]
    phase_s = {name: statistics.median(r["phases"][name] for r in records) for name in PHASES}
    flops = {
        "generation": statistics.median(
            forward_flops(trainer.student, r["row_lengths"]) for r in records
        ),
        "teacher scoring": statistics.median(
            forward_flops(trainer.teacher, r["row_lengths"]) for r in records
        ),
        "student fwd/bwd": statistics.median(
            3 * forward_flops(trainer.student, r["row_lengths"]) for r in records
        ),
    }
    step_s = statistics.median(r["wall"] for r in records)
    return {
        "config": str(config),
        "overrides": overrides,
        "steps": steps,
        "warmup": warmup,
        "batch": cfg.rollout.prompts_per_step,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "loss": cfg.loss.kind,
        "dtype": cfg.model.dtype,
        "teacher_dtype": cfg.model.teacher_dtype,
        "student_params": count_parameters(trainer.student),
        "teacher_params": count_parameters(trainer.teacher),
        "median_step_s": step_s,
        "completion_tokens_per_s": statistics.median(r["tokens"] / r["wall"] for r in records),
        "phase_s": phase_s,
        "phase_flops": flops,
    }


def print_report(result: dict) -> None:
    print(
        f"config {result['config']} {' '.join(result['overrides'])}\n"
        f"batch {result['batch']}, completion cap {result['max_new_tokens']}, loss {result['loss']}, "
        f"student {result['student_params']:,} params ({result['dtype']}), "
        f"teacher {result['teacher_params']:,} ({result['teacher_dtype']})"
    )
    print(
        f"median step {result['median_step_s'] * 1000:.0f} ms, "
        f"{result['completion_tokens_per_s']:.0f} completion tokens/s, {result['threads']} thread(s)"
    )
    rates = result["mm_flops_per_s"]
    print(
        f"machine: torch.mm {rates['float32'] / 1e9:.1f} GFLOP/s float32, "
        f"{rates['bfloat16'] / 1e9:.1f} GFLOP/s bfloat16"
    )
    print(
        f"{'phase':<18}{'median s':>10}{'share':>8}{'GFLOP':>9}{'GFLOP/s':>9}{'of fp32':>9}{'of bf16':>9}"
    )
    total = sum(result["phase_s"].values())
    for name in PHASES:
        seconds = result["phase_s"][name]
        line = f"{name:<18}{seconds:>10.4f}{seconds / total:>8.1%}"
        if name in result["phase_flops"]:
            achieved = result["phase_flops"][name] / seconds
            line += (
                f"{result['phase_flops'][name] / 1e9:>9.2f}{achieved / 1e9:>9.1f}"
                f"{achieved / rates['float32']:>9.1%}{achieved / rates['bfloat16']:>9.1%}"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    rates = {"float32": mm_rate(torch.float32), "bfloat16": mm_rate(torch.bfloat16)}
    result = measure(args.config, args.steps, args.warmup, args.overrides)
    result |= {
        "mm_flops_per_s": rates,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print_report(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
