"""Where an OPD step's time goes, and how far each phase is from the machine's matrix-multiply rate.

Runs the real `train_step` on a config (default: the demo's), warms up, then times repeated steps
and reports medians per phase: generation (student sampling), teacher scoring, student forward (with
the loss), student backward, optimizer step, and overhead (the rest of the step: clipping, lr
schedule, metrics). Each phase is timed in wall-clock and in this process's CPU time; CPU time is
what other jobs on a shared machine do not inflate, so shares and FLOP rates use it. In the same run
it measures the machine's rate on a 2048² `torch.mm` in float32 and in bfloat16 (CPU time, same
thread count) and states each phase's achieved FLOP rate as a share of it.

FLOPs are model FLOPs of the useful work (real tokens only; padding and activation recomputation are
not counted). A row has n real tokens, c of them completion tokens; N_body = the weights of the
decoder's `nn.Linear`s (attention and MLP projections, LoRA adapters included; the embedding lookup
is free), N_head = the LM head's, which runs only where the next token is a completion token (c
positions: scoring skips the prompt's, sampling computes one position per drawn token), L layers,
d = heads x head_dim:
  linear of a row           F = 2·N_body·n + 2·N_head·c
  attention of a row        A = 4·L·d·n(n+1)/2      (causal QKᵀ and AV)
  teacher scoring           F + A of every row under the teacher
  student forward           F + A of every row under the student
  student backward          input gradients F + 2A, plus weight gradients 2·(trainable weights)·
                            tokens (every weight: 2 x forward; LoRA: adapters only, ~F + 2A)
  generation                ≈ F + A of every row under the student (prefill, then one token at a
                            time over the cached context)
  optimizer                 not matmul work; reported in seconds only

Run: .venv/bin/python benchmarks/throughput.py [--config configs/demo.yaml] [--steps 8] [--warmup 2]
     [--threads 1] [--set model.dtype=bfloat16 --set model.teacher_dtype=bfloat16] [--profile]
     [--versus-library-attention]
--versus-library-attention alternates steps with the student's attention switched back to the
library's plain SDPA (a bfloat16 student on a CPU otherwise attends in float32, train/setup.py) and
prints both medians per phase. It also reports the median page faults per step and the peak RSS; --profile adds one step under
torch.profiler, its self CPU time per phase split into matrix products, attention kernels (torch's
scaled_dot_product_attention) and the rest (the profiler's own per-operation cost inflates the rest).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

import foresight.train.loop as train_module
from foresight.config import load_config
from foresight.log import library_verbosity
from foresight.models import count_parameters
from foresight.train.loop import train_step
from foresight.train.setup import setup

# Phase -> the function in foresight.train.loop's namespace whose calls it is (train_step looks
# each one up there at call time, so wrapping the module attribute clocks it).
CLOCKED_CALLS = {
    "generation": "make_batch",
    "teacher scoring": "frozen_hidden_states",
    "student forward": "micro_batch_loss",
}
PHASES = (
    "generation",
    "teacher scoring",
    "student forward",
    "student backward",
    "optimizer",
    "overhead",
)


def mm_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Median FLOP per CPU second of a (size x size) @ (size x size) product in `dtype`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: kernel selection, page faults
    times = []
    for _ in range(repeats):
        started = time.process_time()  # CPU time, like the phases: robust to other jobs
        a @ b
        times.append(time.process_time() - started)
    return 2 * size**3 / statistics.median(times)


def linear_weights(model: torch.nn.Module, trainable: bool = False) -> tuple[int, int]:
    """(decoder weights, LM head weights) of the model's `nn.Linear`s; only those that train when
    `trainable` (a LoRA student: the adapters)."""
    head = model.get_output_embeddings()
    head_ids = {id(head.weight)} | {id(m.weight) for m in head.modules() if hasattr(m, "weight")}

    def counted(weight: torch.Tensor) -> bool:
        return weight.requires_grad or not trainable

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    body = sum(
        m.weight.numel() for m in linears if id(m.weight) not in head_ids and counted(m.weight)
    )
    return body, head.weight.numel() if counted(head.weight) else 0


def attention_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(L layers, d = heads x head_dim) of a decoder."""
    config = model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads * head_dim


def phase_flops(model: torch.nn.Module, lengths: torch.Tensor, completions: torch.Tensor):
    """(forward, backward) model FLOPs over rows of `lengths` real tokens, `completions` of them
    generated (the formulas in the module docstring)."""
    n, c = lengths.double(), completions.double()
    body, head = linear_weights(model)
    layers, width = attention_shape(model)
    linear = 2 * body * n + 2 * head * c
    attention = 4 * layers * width * n * (n + 1) / 2
    trained_body, trained_head = linear_weights(model, trainable=True)
    weight_grads = 2 * trained_body * n + 2 * trained_head * c
    forward = float((linear + attention).sum())
    return forward, float((linear + 2 * attention + weight_grads).sum())


class PhaseClocks:
    """Times the step's named calls by wrapping them (loop.make_batch, loop.frozen_hidden_states,
    loop.micro_batch_loss, Tensor.backward, optimizer.step) in both wall and CPU time (this
    process's, which other jobs on the machine do not inflate); records each rollout's row
    lengths."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.row_lengths = self.completion_lengths = None
        for phase, name in CLOCKED_CALLS.items():
            # A name train_step no longer calls would leave its phase silently at zero.
            if name not in train_module.train_step.__code__.co_names:
                raise RuntimeError(f"train_step no longer calls {name}: update CLOCKED_CALLS")
            setattr(train_module, name, self.clocked(phase, getattr(train_module, name)))
        torch.Tensor.backward = self.clocked("student backward", torch.Tensor.backward)
        # Instance attribute: the class's step (which the lr scheduler checks) stays untouched.
        optimizer.step = self.clocked("optimizer", optimizer.step)

    def clocked(self, phase: str, function):
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.profiler.record_function(phase):  # named for --profile's attribution
                result = function(*args, **kwargs)
            self.wall[phase] = self.wall.get(phase, 0.0) + time.perf_counter() - wall
            self.cpu[phase] = self.cpu.get(phase, 0.0) + time.process_time() - cpu
            if phase == "generation":
                self.row_lengths = result.rollout.attention_mask.sum(1)  # (B,)
                self.completion_lengths = result.rollout.completion_mask.sum(1)  # (B,)
            return result

        return timed

    def step(self, trainer, step: int) -> dict:
        """One `train_step`: seconds per phase (wall and CPU), tokens, row lengths, page faults."""
        self.wall, self.cpu = {}, {}
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        stats = train_step(trainer, step)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        self.wall["overhead"] = wall - sum(self.wall.values())
        self.cpu["overhead"] = cpu - sum(self.cpu.values())
        return {
            "wall": wall,
            "cpu": cpu,
            "wall_phases": self.wall,
            "cpu_phases": self.cpu,
            "tokens": stats["tokens/completion"],
            "row_lengths": self.row_lengths,
            "completion_lengths": self.completion_lengths,
            "page_faults": faults,
        }


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def op_profile(clocks: PhaseClocks, trainer, step: int) -> dict[str, dict[str, float]]:
    """One more step under torch.profiler: self CPU seconds per phase of matrix products,
    attention kernels and everything else (each operation counted in the phase that called it)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        clocks.step(trainer, step)
    split = {phase: {"matmul": 0.0, "attention": 0.0, "other": 0.0} for phase in PHASES}
    for event in profiler.events():
        if event.name in PHASES:
            continue
        phase, parent = "overhead", event.cpu_parent
        while parent is not None and parent.name not in PHASES:
            parent = parent.cpu_parent
        if parent is not None:
            phase = parent.name
        kind = "matmul" if event.name in MATMULS else "other"
        kind = "attention" if "scaled_dot_product" in event.name else kind  # torch's SDPA kernels
        split[phase][kind] += event.self_cpu_time_total / 1e6
    return split


def library_attention_step(clocks: "PhaseClocks", trainer, step: int) -> dict:
    """One step with the student's attention switched back to the library's plain SDPA (what a
    bfloat16 student on a CPU runs without setup.float32_attention_on_cpu), then switched again."""
    own = trainer.student.config._attn_implementation
    trainer.student.set_attn_implementation("sdpa")
    try:
        return clocks.step(trainer, step)
    finally:
        trainer.student.set_attn_implementation(own)


def measure(
    config: Path,
    steps: int,
    warmup: int,
    overrides: list[str],
    profile: bool = False,
    versus: bool = False,
) -> dict:
    cfg = load_config(config, overrides)
    trainer = setup(cfg)
    for step in range(1, warmup + 1):
        train_step(trainer, step)
    clocks = PhaseClocks(trainer.optimizer)
    records, library = [], []
    for index, step in enumerate(range(warmup + 1, warmup + steps + 1)):
        if versus and index % 2 == 0:  # which side goes first alternates
            library.append(library_attention_step(clocks, trainer, step + steps))
        records.append(clocks.step(trainer, step))
        if versus and index % 2 == 1:
            library.append(library_attention_step(clocks, trainer, step + steps))
    split = op_profile(clocks, trainer, warmup + 2 * steps + 1) if profile else None

    def median(key: str, rows: list[dict] = records) -> dict[str, float]:
        return {name: statistics.median(r[key].get(name, 0.0) for r in rows) for name in PHASES}

    def flops(model: torch.nn.Module) -> list[tuple[float, float]]:
        return [phase_flops(model, r["row_lengths"], r["completion_lengths"]) for r in records]

    student, teacher = flops(trainer.student), flops(trainer.teacher)
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
        "median_step_s": statistics.median(r["wall"] for r in records),
        "median_step_cpu_s": statistics.median(r["cpu"] for r in records),
        "completion_tokens_per_s": statistics.median(r["tokens"] / r["wall"] for r in records),
        "completion_tokens_per_cpu_s": statistics.median(r["tokens"] / r["cpu"] for r in records),
        "phase_s": median("wall_phases"),
        "phase_cpu_s": median("cpu_phases"),
        "page_faults_per_step": statistics.median(r["page_faults"] for r in records),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "op_profile_s": split,
        "versus_library_attention": {
            "median_step_cpu_s": statistics.median(r["cpu"] for r in library),
            "phase_cpu_s": median("cpu_phases", library),
        }
        if versus
        else None,
        "phase_flops": {
            "generation": statistics.median(f for f, _ in student),
            "teacher scoring": statistics.median(f for f, _ in teacher),
            "student forward": statistics.median(f for f, _ in student),
            "student backward": statistics.median(b for _, b in student),
        },
    }


def print_report(result: dict) -> None:
    print(
        f"config {result['config']} {' '.join(result['overrides'])}\n"
        f"batch {result['batch']}, completion cap {result['max_new_tokens']}, "
        f"loss {result['loss']}, "
        f"student {result['student_params']:,} params ({result['dtype']}), "
        f"teacher {result['teacher_params']:,} ({result['teacher_dtype']}), "
        f"{result['threads']} thread(s)"
    )
    print(
        f"median step {result['median_step_s'] * 1000:.0f} ms wall, "
        f"{result['median_step_cpu_s'] * 1000:.0f} ms CPU; completion tokens "
        f"{result['completion_tokens_per_s']:.0f}/s wall, "
        f"{result['completion_tokens_per_cpu_s']:.0f}/CPU s"
    )
    rates = result["mm_flops_per_cpu_s"]
    print(
        f"machine: 2048² torch.mm {rates['float32'] / 1e9:.1f} GFLOP per CPU s float32, "
        f"{rates['bfloat16'] / 1e9:.1f} bfloat16"
    )
    print(
        f"page faults per step {result['page_faults_per_step']:,.0f}; "
        f"peak RSS {result['peak_rss_mib']:,.0f} MiB"
    )
    print(
        f"{'phase':<18}{'wall s':>8}{'CPU s':>8}{'CPU share':>10}{'GFLOP':>8}"
        f"{'GFLOP/CPU s':>12}{'of fp32 mm':>11}{'of bf16 mm':>11}"
    )
    total = sum(result["phase_cpu_s"].values())
    for name in PHASES:
        wall, cpu = result["phase_s"][name], result["phase_cpu_s"][name]
        line = f"{name:<18}{wall:>8.3f}{cpu:>8.3f}{cpu / total:>10.1%}"
        if name in result["phase_flops"] and cpu > 0:
            achieved = result["phase_flops"][name] / cpu
            line += (
                f"{result['phase_flops'][name] / 1e9:>8.2f}{achieved / 1e9:>12.1f}"
                f"{achieved / rates['float32']:>11.1%}{achieved / rates['bfloat16']:>11.1%}"
            )
        print(line)
    if result["versus_library_attention"]:
        other = result["versus_library_attention"]
        print(f"steps alternating with the library's SDPA attention ({result['dtype']}):")
        print(f"{'phase':<18}{'this CPU s':>11}{'library CPU s':>14}{'ratio':>7}")
        rows = [("whole step", result["median_step_cpu_s"], other["median_step_cpu_s"])]
        rows += [(n, result["phase_cpu_s"][n], other["phase_cpu_s"][n]) for n in PHASES]
        for name, ours, theirs in rows:
            print(f"{name:<18}{ours:>11.3f}{theirs:>14.3f}{theirs / max(ours, 1e-9):>7.2f}")
    if result["op_profile_s"]:
        print("one profiled step, self CPU s by operation (profiler overhead included):")
        print(f"{'phase':<18}{'matmul':>8}{'attention':>10}{'other':>8}")
        for name, kinds in result["op_profile_s"].items():
            print(
                f"{name:<18}{kinds['matmul']:>8.3f}{kinds['attention']:>10.3f}{kinds['other']:>8.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--profile", action="store_true", help="one more step under torch.profiler, split by op"
    )
    parser.add_argument(
        "--versus-library-attention",
        action="store_true",
        help="alternate steps with the student's attention as the library's plain SDPA",
    )
    args = parser.parse_args()
    library_verbosity()
    torch.set_num_threads(args.threads)
    rates = {"float32": mm_rate(torch.float32), "bfloat16": mm_rate(torch.bfloat16)}
    result = measure(
        args.config,
        args.steps,
        args.warmup,
        args.overrides,
        args.profile,
        args.versus_library_attention,
    )
    result |= {
        "mm_flops_per_cpu_s": rates,
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
