"""foresight's OPD step against TRL's `DistillationTrainer` on the same work, side by side (CPU).

Both sides get the same student and teacher folders, the same prompts in the same order (step k's
prompts are foresight's `step_examples(step k)`; TRL reads them unshuffled from an in-memory
dataset), the same batch size, completion cap, temperature 1, full-vocabulary reverse KL(student ‖
teacher) (TRL: `beta=1.0`), AdamW with the same lr and betas, no weight decay, grad-norm clip 1,
constant lr, the same number of steps, and the same precision (`--precision`: float32 on both, or
bfloat16: our student under autocast and teacher weights in bfloat16, TRL's `bf16=True`). Each run
is a fresh process; ours and TRL's alternate (the side that goes first alternates too), several
repetitions with seeds 0..R-1, and both set the same torch thread count.

Per step we time the whole optimizer step (ours: `train_step`; TRL: `on_step_begin` to
`on_step_end`, which covers generation, scoring, backward, clipping and the optimizer), in
wall-clock and in the process's CPU time (which other jobs on a shared machine do not inflate), and
count completion tokens (EOS included, both sides). The first `--warmup` steps train but are not
timed. After the last step both students go through the same held-out evaluation
(`foresight.train.evaluate`: greedy accuracy on the test split, and the reverse KL to the teacher on T=1
samples).

Configurations: "tiny" is the committed `models/arith/{base,teacher}` (0.8M parameters each);
"small" is a ~5M pair (MODEL_SIZES["small"]) built once by `prepare_task` with a short schedule
(base = SFT step 30, teacher = step 150) into runs/bench_models/arith unless it exists there (about
20 minutes on one busy core). "smollm2" is SmolLM2-135M-Instruct (`make models/smollm2-135m-instruct`)
as the teacher and, as the student, a copy whose decoder weights carry fixed Gaussian noise
(relative scale NOISE, seed 0; written once into runs/bench_models/smollm2-noisy) trained through
LoRA adapters (r 8, alpha 16, all seven projections; peft on both sides): distillation pulls the
noisy copy back toward the teacher, so the held-out KL says whether each side learned. Its prompts
are the arith prompts rendered with the model's chat template (TRL gets the rendered text, so both
sides tokenize the same ids); it runs only when the imported folder exists.

Run: .venv/bin/python benchmarks/vs_trl.py [--sizes tiny small smollm2] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SMALL_DIR = Path("runs/bench_models/arith")
SMOLLM2_DIR = Path("models/smollm2-135m-instruct")  # `foresight import-gguf` writes it
NOISY_DIR = Path("runs/bench_models/smollm2-noisy")
NOISE = 0.05  # the student's decoder weights: w + NOISE * std(w) * N(0, 1)


@dataclass(frozen=True)
class Setting:
    student: Path
    teacher: Path
    batch: int
    max_new_tokens: int
    steps: int  # timed steps (after --warmup)
    eval_prompts: int
    lora: bool = False


SIZES = {
    "tiny": Setting(Path("models/arith/base"), Path("models/arith/teacher"), 64, 40, 16, 256),
    "small": Setting(SMALL_DIR / "base", SMALL_DIR / "teacher", 32, 40, 8, 256),
    "smollm2": Setting(NOISY_DIR, SMOLLM2_DIR, 8, 32, 4, 64, lora=True),
}
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0}
LR = 1e-3
BETAS = (0.9, 0.95)


def base_config(args: argparse.Namespace):
    from foresight.config import Config

    setting = SIZES[args.size]
    return Config.model_validate(
        {
            "model": {
                "student": str(setting.student),
                "teacher": str(setting.teacher),
                # bfloat16: the student's passes under autocast, the teacher's weights in bfloat16
                "dtype": args.precision,
                "teacher_dtype": args.precision,
            },
            "task": {"name": "arith"},
            "rollout": {
                "prompts_per_step": setting.batch,
                "max_new_tokens": setting.max_new_tokens,
            },
            "loss": {"kind": "reverse_kl"},
            "optim": {"lr": LR, "betas": list(BETAS), "weight_decay": 0.0, "grad_clip": 1.0},
            "train": {
                "steps": args.warmup + args.steps,
                "seed": args.seed,
                "threads": args.threads,
            },
            "log": {"tensorboard": False},
            "lora": {"enabled": setting.lora, **LORA},
        }
    )


def run_ours(args: argparse.Namespace) -> dict:
    from foresight.train.loop import train_step
    from foresight.train.setup import setup

    cfg = base_config(args)
    t = setup(cfg)
    times, cpu_times, tokens = [], [], []
    for step in range(1, cfg.train.steps + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        stats = train_step(t, step)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
        tokens.append(stats["tokens/completion"])
    return {
        "times": times,
        "cpu_times": cpu_times,
        "tokens": tokens,
        "student": t.student,
        "teacher": t.teacher,
    }


def worker(args: argparse.Namespace) -> None:
    """One run in this (fresh) process; prints one RESULT line: timings and held-out scores."""
    import tempfile

    import torch

    from foresight.cli import quiet_libraries
    from foresight.models import count_parameters, load_tokenizer
    from foresight.tasks import load_task
    from foresight.train.evaluate import evaluate

    quiet_libraries()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        if args.worker == "ours":
            run = run_ours(args)
        else:
            from trl_side import run_trl  # benchmarks/ is on sys.path: this script's folder

            run = run_trl(base_config(args), args.precision, Path(scratch))
    cfg = base_config(args)
    times, tokens = run["times"][args.warmup :], run["tokens"][args.warmup :]
    cpu_times = run["cpu_times"][args.warmup :]
    assert len(times) == len(tokens) == args.steps, (len(times), len(tokens))
    held_out = evaluate(
        run["student"],
        load_tokenizer(cfg.model.student, "student"),
        load_task(cfg.task),
        "test",
        args.eval_prompts,
        cfg.rollout.max_new_tokens,
        256,
        teacher=run["teacher"],
        sampled=False,
        seed=0,
    )
    result = {
        "side": args.worker,
        "size": args.size,
        "seed": args.seed,
        "student_params": count_parameters(run["student"]),
        "median_step_s": statistics.median(times),
        "tokens_per_s": sum(tokens) / sum(times),
        "median_cpu_step_s": statistics.median(cpu_times),
        "tokens_per_cpu_s": sum(tokens) / sum(cpu_times),
        "accuracy": held_out["eval/accuracy"],
        "kl": held_out["eval/kl_reverse"],
    }
    print("RESULT " + json.dumps(result), flush=True)


def ensure_noisy_smollm2() -> None:
    """The SmolLM2 student: the imported model with fixed noise on its decoder weights."""
    if (NOISY_DIR / "config.json").is_file():
        return
    import torch

    from foresight.models import load_model, load_tokenizer

    print(f"writing the noisy SmolLM2 student into {NOISY_DIR} (noise {NOISE}, seed 0) ...")
    model = load_model(SMOLLM2_DIR, "student")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.model.layers.named_parameters():
            if weight.ndim == 2:  # the projections; norms stay as they are
                noise = torch.randn(weight.shape, generator=generator)
                weight.add_(noise * weight.std() * NOISE)
    model.save_pretrained(NOISY_DIR)
    load_tokenizer(SMOLLM2_DIR, "student").save_pretrained(NOISY_DIR)
    model.generation_config.save_pretrained(NOISY_DIR)


def ensure_small_pair() -> None:
    if (SMALL_DIR / "teacher" / "config.json").is_file():
        return
    from foresight.config_sections import TaskConfig
    from foresight.prepare import prepare_task

    print(f"building the ~5M pair into {SMALL_DIR} (SFT for 150 steps, prepare's base rule) ...")
    summary = prepare_task(TaskConfig(name="arith"), SMALL_DIR, "small", 0, teacher_steps=150)
    print(f"  base {summary['base_accuracy']:.3f}, teacher {summary['teacher_accuracy']:.3f}")


def launch(side: str, size: str, seed: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--size",
        size,
        "--seed",
        str(seed),
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps or SIZES[size].steps),
        "--eval-prompts",
        str(args.eval_prompts or SIZES[size].eval_prompts),
        "--precision",
        args.precision,
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {size} seed {seed} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def summarize(size: str, runs: list[dict]) -> dict:
    sides = {side: [r for r in runs if r["side"] == side] for side in ("ours", "trl")}
    row = {"size": size, "student_params": runs[0]["student_params"], "reps": len(sides["ours"])}
    for side, results in sides.items():
        row[side] = {
            "median_step_s": statistics.median(r["median_step_s"] for r in results),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "median_cpu_step_s": statistics.median(r["median_cpu_step_s"] for r in results),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in results),
            "accuracy": [r["accuracy"] for r in results],
            "kl": [r["kl"] for r in results],
        }
    row["speedup"] = row["ours"]["tokens_per_s"] / row["trl"]["tokens_per_s"]
    row["cpu_speedup"] = row["ours"]["tokens_per_cpu_s"] / row["trl"]["tokens_per_cpu_s"]
    # Per-repetition ratios: each pair ran back to back, so it shares the machine's load.
    row["speedup_per_rep"] = [
        o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(sides["ours"], sides["trl"])
    ]
    return row


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'size':<6}{'params':>10}{'side':>6}{'step ms':>9}{'tok/s':>7}{'CPU ms':>8}"
        f"{'tok/CPU s':>10}  {'held-out acc med [min, max]':<28}{'KL to teacher med [min, max]'}"
    )
    for row in rows:
        for side in ("ours", "trl"):
            r = row[side]
            print(
                f"{row['size']:<6}{row['student_params']:>10,}{side:>6}"
                f"{r['median_step_s'] * 1000:>9.0f}{r['tokens_per_s']:>7.0f}"
                f"{r['median_cpu_step_s'] * 1000:>8.0f}{r['tokens_per_cpu_s']:>10.0f}"
                f"  {spread(r['accuracy']):<28}{spread(r['kl'])}"
            )
        ratios = ", ".join(f"{x:.2f}" for x in row["speedup_per_rep"])
        print(
            f"{'':<6}ours/TRL completion tokens/s: {row['speedup']:.2f}x wall (per rep: {ratios}), "
            f"{row['cpu_speedup']:.2f}x per CPU second"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="timed steps; 0 = per-size default")
    parser.add_argument("--eval-prompts", type=int, default=0, help="0 = per-size default")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if "smollm2" in args.sizes:
        if not (SMOLLM2_DIR / "config.json").is_file():
            print(f"note: {SMOLLM2_DIR} is missing (make {SMOLLM2_DIR}); smollm2 skipped.")
            args.sizes = [size for size in args.sizes if size != "smollm2"]
        else:
            ensure_noisy_smollm2()
    if "small" in args.sizes:
        ensure_small_pair()
    rows = []
    for size in args.sizes:
        runs = []
        for rep in range(args.reps):
            order = ("ours", "trl") if rep % 2 == 0 else ("trl", "ours")
            for side in order:
                runs.append(launch(side, size, rep, args))
                r = runs[-1]
                print(
                    f"{size} rep {rep} {side:>4}: step {r['median_step_s'] * 1000:.0f} ms "
                    f"(CPU {r['median_cpu_step_s'] * 1000:.0f} ms), {r['tokens_per_s']:.0f} tok/s "
                    f"({r['tokens_per_cpu_s']:.0f} per CPU s), acc {r['accuracy']:.3f}, "
                    f"KL {r['kl']:.4f}",
                    flush=True,
                )
        rows.append(summarize(size, runs))
    print_table(rows)
    import torch
    import transformers
    import trl

    machine = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": "cpu",
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "precision": args.precision,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }
    print(json.dumps({"rows": rows, **machine}))


if __name__ == "__main__":
    main()
