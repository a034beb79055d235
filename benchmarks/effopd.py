"""EffOPD against plain OPD, honestly: several seeds, plain OPD at 1x/2x/4x its learning rate.

For each embedded task and seed, runs from the same committed base (same config otherwise):
  opd@1x, opd@2x, opd@4x      plain OPD at lr, 2·lr, 4·lr (the paper's own ablation)
  effopd-paper@1x             V = accuracy of 1 sample at T=1 on 50 train prompts, m = 2,4,6,8,10, >=
  effopd-kl@1x                V = -reverse KL to the teacher on 256 train prompts, m = 1,2,3,4,6,8
Target = base + 95% of the val gap to the teacher, or plain OPD@1x's best (median over seeds) if lower.
Reports per task (median [min, max] over seeds): optimizer steps and wall seconds (validation cost
included) to reach the target, final accuracy after the step budget, accepted multipliers; the
speedup of each EffOPD variant against plain OPD at the same lr and against the best of the three.
Writes results to --out (runs, results.json, table.md, effopd.png) and prints one JSON line last.

Run: .venv/bin/python benchmarks/effopd.py --out runs/bench-effopd [--seeds 0 1 2] [--steps 120]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections import Counter
from pathlib import Path

import torch

from foresight.config import load_config
from foresight.log import library_verbosity, read_metrics
from foresight.models import load_model, load_tokenizer
from foresight.tasks import load_task
from foresight.train.evaluate import evaluate
from foresight.train.loop import train

PAPER = [
    "effopd.enabled=true",
    "effopd.signal=accuracy",
    "effopd.n_prompts=50",
    "effopd.multipliers=[2,4,6,8,10]",
    "effopd.accept=ge",
]
KL = [
    "effopd.enabled=true",
    "effopd.signal=kl",
    "effopd.n_prompts=256",
    "effopd.multipliers=[1,2,3,4,6,8]",
    "effopd.accept=ge",
]
METHODS = {
    "opd@1x": (1, []),
    "opd@2x": (2, []),
    "opd@4x": (4, []),
    "effopd-paper@1x": (1, PAPER),
    "effopd-kl@1x": (1, KL),
}


def run_one(
    config: Path, out: Path, method: str, seed: int, steps: int, every: int, lr: float
) -> Path:
    factor, extra = METHODS[method]
    run_dir = out / "runs" / f"{method}-seed{seed}"
    if (run_dir / "checkpoints" / f"step-{steps:06d}").is_dir():
        return run_dir  # finished earlier: the benchmark can be resumed
    overrides = [
        f"optim.lr={lr * factor}",
        f"train.seed={seed}",
        f"train.steps={steps}",
        f"train.out_dir={run_dir}",
        f"train.checkpoint_every={steps}",
        "train.checkpoint_at=[]",
        f"eval.every={every}",
        "eval.sampled=false",
        "eval.teacher_kl=false",
        "log.progress=false",
        "log.tensorboard=false",
        *extra,
    ]
    train(load_config(config, overrides), overwrite=True)
    return run_dir


def val_accuracy(config: Path, overrides: list[str], role: str) -> float:
    """Greedy accuracy of the base student or the teacher on the runs' validation prompts."""
    cfg = load_config(config, overrides)
    name = cfg.model.student if role == "student" else cfg.model.teacher
    scores = evaluate(
        load_model(name, role),
        load_tokenizer(name, role),
        load_task(cfg.task),
        cfg.eval.split,
        cfg.eval.n_prompts,
        cfg.rollout.max_new_tokens,
        cfg.eval.batch_size,
        sampled=False,
    )
    return scores["eval/accuracy"]


def curve(run_dir: Path) -> list[dict[str, float]]:
    """Per evaluation: step, accuracy, and wall seconds so far (steps plus EffOPD searches)."""
    points, wall = [], 0.0
    for row in read_metrics(run_dir):
        wall += row.get("time/step_s", 0.0) + row.get("time/effopd_s", 0.0)
        if "eval/accuracy" in row:
            points.append({"step": row["step"], "accuracy": row["eval/accuracy"], "wall_s": wall})
    return points


def accepted_multipliers(run_dir: Path) -> Counter:
    """How often each multiplier was accepted over a run's searches (0: none accepted)."""
    return Counter(
        r["effopd/accepted_multiplier"]
        for r in read_metrics(run_dir)
        if "effopd/accepted_multiplier" in r
    )


def run_record(run_dir: Path, method: str, lr: float, seed: int, steps: int) -> dict:
    """A finished run as the benchmarks keep it: who it is, its curve, its accepted multipliers."""
    accepted = accepted_multipliers(run_dir)
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "curve": curve(run_dir),
        "accepted": {f"{m:g}": n for m, n in sorted(accepted.items())},
    }


def first_reaching(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in points if p["accuracy"] >= target), None)


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]"


def summarize(
    task: str,
    curves: dict[str, dict[int, list]],
    accepted: dict[str, Counter],
    base: float,
    teacher: float,
    seeds: list[int],
) -> dict:
    best_plain = statistics.median(max(p["accuracy"] for p in curves["opd@1x"][s]) for s in seeds)
    target = min(base + 0.95 * (teacher - base), best_plain)
    rows = {}
    for method, by_seed in curves.items():
        hits = [first_reaching(by_seed[s], target) for s in seeds]
        rows[method] = {
            "steps": [h["step"] for h in hits if h],
            "wall_s": [h["wall_s"] for h in hits if h],
            "reached": sum(h is not None for h in hits),
            "final": [by_seed[s][-1]["accuracy"] for s in seeds],
            "accepted": dict(accepted.get(method, {})),
        }
    return {"task": task, "base": base, "teacher": teacher, "target": target, "rows": rows}


def speedup(rows: dict, method: str, reference: str, key: str) -> str:
    mine, theirs = rows[method][key], rows[reference][key]
    if not mine or not theirs:
        return "n/a"
    return f"{statistics.median(theirs) / statistics.median(mine):.2f}x"


def table(result: dict, seeds: list[int]) -> str:
    rows = result["rows"]
    plain = [m for m in rows if m.startswith("opd@") and rows[m]["steps"]]
    best = min(plain, key=lambda m: statistics.median(rows[m]["steps"])) if plain else "opd@1x"
    lines = [
        f"### {result['task']}: base {result['base']:.3f}, teacher {result['teacher']:.3f}, "
        f"target {result['target']:.3f} ({len(seeds)} seeds; best plain OPD: {best})",
        "",
        "| method | reached | steps to target | wall s to target | final accuracy | "
        "speedup (steps) vs opd@1x | vs best plain | speedup (wall) vs opd@1x | accepted m |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        accepted = ", ".join(f"{m:g}:{n}" for m, n in sorted(row["accepted"].items())) or "-"
        lines.append(
            f"| {method} | {row['reached']}/{len(seeds)} | {spread(row['steps'])} | "
            f"{spread(row['wall_s'])} | {spread(row['final'])} | "
            f"{speedup(rows, method, 'opd@1x', 'steps')} | {speedup(rows, method, best, 'steps')} | "
            f"{speedup(rows, method, 'opd@1x', 'wall_s')} | {accepted} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], all_curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        for method, by_seed in all_curves[result["task"]].items():
            for column, x in enumerate(("step", "wall_s")):
                for index, points in enumerate(by_seed.values()):
                    axes[row][column].plot(
                        [p[x] for p in points],
                        [p["accuracy"] for p in points],
                        color=f"C{list(METHODS).index(method)}",
                        alpha=0.7,
                        label=method if index == 0 else None,
                    )
        for column, label in enumerate(("optimizer step", "wall seconds (validation included)")):
            axes[row][column].axhline(result["target"], color="k", linestyle=":", label="target")
            axes[row][column].set(
                xlabel=label, ylabel="val accuracy (greedy)", title=result["task"]
            )
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "effopd.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-effopd"))
    parser.add_argument("--tasks", nargs="+", default=["arith", "modchain"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=10, help="evaluate every N steps")
    parser.add_argument("--lr", type=float, default=2.5e-4, help="the 1x learning rate")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    library_verbosity()
    results, all_curves = [], {}
    for task in args.tasks:
        config = Path("configs") / ("demo.yaml" if task == "arith" else f"{task}.yaml")
        curves = {m: {} for m in args.methods}
        accepted: dict[str, Counter] = {}
        for seed in args.seeds:
            for method in args.methods:
                run_dir = run_one(
                    config, args.out / task, method, seed, args.steps, args.every, args.lr
                )
                curves[method][seed] = curve(run_dir)
                accepted.setdefault(method, Counter()).update(accepted_multipliers(run_dir))
        base = curves["opd@1x"][args.seeds[0]][0]["accuracy"]  # step-0 eval: greedy, seed-free
        results.append(
            summarize(task, curves, accepted, base, val_accuracy(config, [], "teacher"), args.seeds)
        )
        all_curves[task] = curves
    markdown = "".join(table(r, args.seeds) + "\n" for r in results)
    (args.out / "table.md").write_text(markdown)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, all_curves, args.out)
    print(markdown)
    print(
        json.dumps(
            {
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
