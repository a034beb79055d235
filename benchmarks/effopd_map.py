"""Where EffOPD pays: a learning-rate regime map against plain OPD (issue #18, item 1).

For one embedded task, a grid of learning rates × seeds × methods, each run from the committed base:
  opd           plain OPD
  effopd-paper  EffOPD as published: accuracy of 1 sample at T=1 on 50 prompts, m = 2..10, >=
  effopd-kl     our variant: minus the reverse KL to the teacher on 256 prompts, m = 1,2,3,4,6,8
The targets are fixed before any run: base + 50% and base + 80% of the base-to-teacher gap in greedy
accuracy on the validation prompts the runs are evaluated on (targets.json). A seed that never
reaches a target counts as the step budget (and its whole wall time), never as missing.
Per (method, lr, target), over seeds: steps to the target, the step speedup against plain OPD at the
same lr and against plain OPD at its best lr (paired by seed), the same for wall time counted in
each run's own mean step time (EffOPD's searches included, evaluations excluded), and the final
accuracy. "(k cens.)" marks ratios where a side of k seed pairs never reached the target (a bound).
Each finished run is written to OUT/results/<run>.json at once; a rerun skips those. Several
processes of the same command share the grid (each claims a run before starting it); a last call
with --summarize-only writes OUT/results.json, OUT/table.md and OUT/effopd_regime_map.png.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/effopd_map.py --out runs/bench-effopd-map \
         --task arith --lrs 1.7e-5 5e-5 1.5e-4 5e-4 1e-3 --seeds 0 1 2 --steps 150 --every 10 \
         --n-prompts 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from effopd import KL, PAPER, run_record, val_accuracy  # benchmarks/effopd.py, next to this file

from foresight.config import load_config
from foresight.log import library_verbosity, read_metrics
from foresight.train.loop import train

# The variants' study (item 2): the published rule with one change each.
VARIANTS = {
    # The step: multipliers below 1 as well, in order, so the search is a coarse line search.
    "effopd-finer-m": [*PAPER, "effopd.multipliers=[0.25,0.5,1,2,4,8]"],
    # The signal: a jump must win on at least 2 more of the 50 prompts than it loses (the samples
    # share their random numbers across candidates), so ties and noise alone accept nothing.
    "effopd-min-gain": [*PAPER, "effopd.min_gain=0.03"],
    # The schedule: every 10 steps, and only when the last two 10-step segments agree.
    "effopd-straight": [
        *PAPER,
        "effopd.schedule=straight",
        "effopd.every=10",
        "effopd.min_cosine=0.8",
    ],
    # The direction: W_t minus an exponential average of the weights since the anchor (about the
    # last 10 steps at beta 0.9) instead of Δ since the anchor, at the same length ‖Δ‖.
    "effopd-average": [*PAPER, "effopd.direction=average", "effopd.average_beta=0.9"],
    # The same gate at 0.7, the straight band of the map's straightness table (chosen after it).
    "effopd-straight-0.7": [
        *PAPER,
        "effopd.schedule=straight",
        "effopd.every=10",
        "effopd.min_cosine=0.7",
    ],
    # A combination: our KL signal, searched only where the trajectory is straight (gate 0.7).
    "effopd-kl-straight-0.7": [
        *KL,
        "effopd.schedule=straight",
        "effopd.every=10",
        "effopd.min_cosine=0.7",
    ],
    # The acceptance: strictly better (the official code's >), so a tie accepts nothing.
    "effopd-gt": [*PAPER, "effopd.accept=gt"],
}
METHODS = {"opd": [], "effopd-paper": PAPER, "effopd-kl": KL, **VARIANTS}
MAP_METHODS = ["opd", "effopd-paper", "effopd-kl"]  # the regime map's figure
FRACTIONS = (0.5, 0.8)  # of the base-to-teacher gap


def common_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"eval.n_prompts={args.n_prompts}",
        f"train.threads={args.threads}",
        "eval.sampled=false",
        "eval.teacher_kl=false",
        "log.progress=false",
        "log.tensorboard=false",
    ]


def fix_targets(config: Path, args: argparse.Namespace) -> dict:
    """Base and teacher accuracy, and the targets, computed once before any run and kept."""
    path = args.out / "targets.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["n_prompts"] != args.n_prompts or saved["task"] != args.task:
            raise SystemExit(f"{path} was made with other settings; use another --out")
        # --extra-fractions: more targets from the same base and teacher accuracy, recorded with
        # the time they were added (after runs had been seen, unlike the first ones).
        extra = {
            _label(f): saved["base"] + f * (saved["teacher"] - saved["base"])
            for f in args.extra_fractions
            if _label(f) not in saved["targets"]
        }
        if extra:
            saved["targets"] = dict(sorted((saved["targets"] | extra).items(), key=_fraction))
            added = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            saved.setdefault("added", {}).update({label: added for label in extra})
            path.write_text(json.dumps(saved, indent=1))
        return saved
    overrides = common_overrides(args)
    base = val_accuracy(config, overrides, "student")
    teacher = val_accuracy(config, overrides, "teacher")
    targets = {_label(f): base + f * (teacher - base) for f in FRACTIONS}
    saved = {
        "task": args.task,
        "n_prompts": args.n_prompts,
        "base": base,
        "teacher": teacher,
        "targets": targets,
        "fixed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))
    return saved


def _label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _fraction(item: tuple[str, float]) -> float:
    return float(item[0].rstrip("%"))


def run_one(config: Path, args: argparse.Namespace, method: str, lr: float, seed: int) -> dict:
    name = f"{method}-lr{lr:g}-seed{seed}"
    result_path = args.out / "results" / f"{name}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())  # finished earlier: resumable
    run_dir = args.out / "runs" / name
    overrides = [
        f"optim.lr={lr}",
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"train.out_dir={run_dir}",
        # Plain OPD keeps a checkpoint series (--checkpoint-every) for `foresight analyze`'s
        # straightness signal; the EffOPD runs keep only their last step.
        f"train.checkpoint_every={(args.checkpoint_every or args.steps) if method == 'opd' else args.steps}",
        "train.checkpoint_at=[]",
        f"eval.every={args.every}",
        *common_overrides(args),
        *METHODS[method],
    ]
    started = time.time()
    train(load_config(config, overrides), overwrite=True)
    result = {
        **run_record(run_dir, method, lr, seed, args.steps),
        "process_s": time.time() - started,
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result))
    return result


def claim(path: Path) -> bool:
    """Claim a run for this process, so that several processes can share one grid; a claim whose
    process is gone is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False  # its process is alive
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)
    try:
        with open(path, "x") as file:
            file.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True


def reach(run: dict, target: float) -> tuple[float, float, bool, float]:
    """Steps, wall seconds and ok to the target (the budget and the whole run if never), and the
    wall seconds in units of the run's own mean step time: steps plus searches in step
    equivalents, which other jobs' load on a shared machine affects far less than raw seconds."""
    hit = next((p for p in run["curve"] if p["accuracy"] >= target), run["curve"][-1])
    ok = hit["accuracy"] >= target
    steps = hit["step"] if ok else run["steps"]
    return steps, hit["wall_s"], ok, hit["wall_s"] / run["mean_step_s"]


def mean_step_s(run_dir: Path) -> float:
    """Mean optimizer-step seconds of a run (searches and evaluations excluded)."""
    rows = [r for r in read_metrics(run_dir) if "time/step_s" in r]
    return sum(r["time/step_s"] for r in rows) / len(rows)


def spread(values: list[float], unit: str = "", censored: int = 0) -> str:
    if not values:
        return "n/a"
    mark = f" ({censored} cens.)" if censored else ""
    return f"{statistics.median(values):.3g}{unit} [{min(values):.3g}, {max(values):.3g}]{mark}"


def summarize(runs: list[dict], targets: dict) -> dict:
    """Per target, method and lr: steps/wall to target and paired speedups over the common seeds."""
    by_key = {(r["method"], r["lr"], r["seed"]): r for r in runs}
    lrs = sorted({r["lr"] for r in runs})
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    summary = {}
    for label, target in targets["targets"].items():
        reached = {k: reach(r, target) for k, r in by_key.items()}
        plain = {lr: [reached[k] for k in by_key if k[0] == "opd" and k[1] == lr] for lr in lrs}
        # Plain OPD's best lr: fewest median steps to this target, then most seeds reaching it.
        best_lr = min(
            (lr for lr in lrs if plain[lr]),
            key=lambda lr: (
                statistics.median(r[0] for r in plain[lr]),
                -sum(r[2] for r in plain[lr]),
            ),
            default=None,
        )
        rows = []
        for method in methods:
            for lr in lrs:
                seeds = sorted(k[2] for k in by_key if k[:2] == (method, lr))
                if not seeds:
                    continue
                mine = {s: reached[(method, lr, s)] for s in seeds}
                row = {
                    "method": method,
                    "lr": lr,
                    "seeds": seeds,
                    "reached": sum(r[2] for r in mine.values()),
                    "steps": [mine[s][0] for s in seeds],
                    "wall_s": [mine[s][1] for s in seeds],
                    "final": [by_key[(method, lr, s)]["curve"][-1]["accuracy"] for s in seeds],
                    "accepted": dict(
                        sum(
                            (Counter(by_key[(method, lr, s)]["accepted"]) for s in seeds), Counter()
                        )
                    ),
                }
                for name, ref_lr in (("same_lr", lr), ("best_lr", best_lr)):
                    paired = [s for s in seeds if ("opd", ref_lr, s) in reached]
                    row[f"step_speedup_{name}"] = [
                        reached[("opd", ref_lr, s)][0] / mine[s][0] for s in paired
                    ]
                    row[f"wall_speedup_{name}"] = [
                        reached[("opd", ref_lr, s)][3] / mine[s][3] for s in paired
                    ]
                    # Pairs where either side never reached the target: its budget stands in, so
                    # the ratio is a bound, not a measurement.
                    row[f"censored_{name}"] = sum(
                        not (mine[s][2] and reached[("opd", ref_lr, s)][2]) for s in paired
                    )
                rows.append(row)
        reached_by_plain = best_lr is not None and any(r[2] for r in plain[best_lr])
        summary[label] = {
            "target": target,
            "best_plain_lr": best_lr,
            "plain_reached": reached_by_plain,
            "rows": rows,
        }
    return summary


def table(summary: dict, targets: dict, budget: int) -> str:
    lines = []
    for label, part in summary.items():
        later = " (added after runs were seen)" if label in targets.get("added", {}) else ""
        best = f"plain OPD's best lr for it: {part['best_plain_lr']:g}"
        if not part["plain_reached"]:
            best = "no plain OPD run reaches it (speedups against 'best lr' use the first lr)"
        lines += [
            (
                f"### target {label} of the gap{later}: accuracy {part['target']:.3f} (base "
                f"{targets['base']:.3f}, teacher {targets['teacher']:.3f}); {best}; budget "
                f"{budget} steps"
            ),
            "",
            (
                "| method | lr | reached | steps to target | step speedup vs opd same lr | "
                "vs opd best lr | wall s to target | wall speedup (own step time) vs opd same "
                "lr | vs opd best lr | final accuracy | accepted m |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in part["rows"]:
            accepted = ", ".join(f"{m}:{n}" for m, n in row["accepted"].items()) or "-"
            lines.append(
                f"| {row['method']} | {row['lr']:g} | {row['reached']}/{len(row['seeds'])} | "
                f"{spread(row['steps'])} | "
                f"{spread(row['step_speedup_same_lr'], 'x', row['censored_same_lr'])} | "
                f"{spread(row['step_speedup_best_lr'], 'x', row['censored_best_lr'])} | "
                f"{spread(row['wall_s'])} | "
                f"{spread(row['wall_speedup_same_lr'], 'x', row['censored_same_lr'])} | "
                f"{spread(row['wall_speedup_best_lr'], 'x', row['censored_best_lr'])} | "
                f"{spread(row['final'])} | "
                f"{accepted} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, methods: list[str], path: Path, refs=("same_lr", "best_lr")) -> None:
    """Step speedup against lr per target: solid against plain OPD at the same lr, dashed at its
    best lr (`refs` picks which)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A target no run reached has ratios of 1 by construction: nothing to draw.
    summary = {k: v for k, v in summary.items() if any(r["reached"] for r in v["rows"])}
    if not summary:
        return
    fig, axes = plt.subplots(1, len(summary), figsize=(4.6 * len(summary), 3.4), squeeze=False)
    for axis, (label, part) in zip(axes[0], summary.items()):
        for index, method in enumerate(methods):
            for ref, style in (("same_lr", "-"), ("best_lr", "--")):
                if ref not in refs:
                    continue
                rows = [
                    r for r in part["rows"] if r["method"] == method and r[f"step_speedup_{ref}"]
                ]
                if not rows or (method == "opd" and ref == "same_lr"):
                    continue  # plain OPD against itself is 1 by construction
                values = [r[f"step_speedup_{ref}"] for r in rows]
                middle = [statistics.median(v) for v in values]
                shift = 1.06 ** (2 * index + (ref == "best_lr") - 2)  # keep the series apart
                axis.errorbar(
                    [r["lr"] * shift for r in rows],
                    middle,
                    yerr=[
                        [m - min(v) for m, v in zip(middle, values)],
                        [max(v) - m for m, v in zip(middle, values)],
                    ],
                    color=f"C{index}",
                    linestyle=style,
                    marker="o",
                    markersize=3,
                    capsize=2,
                    label=f"{method} vs opd {'same lr' if ref == 'same_lr' else 'best lr'}",
                )
                censored = [r for r in rows if r[f"censored_{ref}"]]
                axis.scatter(  # white centre: some seed of the pair never reached the target
                    [r["lr"] * shift for r in censored],
                    [statistics.median(r[f"step_speedup_{ref}"]) for r in censored],
                    s=7,
                    color="white",
                    zorder=3,
                )
        axis.axhline(1.0, color="k", linewidth=0.8, linestyle=":")
        axis.set(
            xscale="log",
            xlabel="learning rate",
            ylabel="step speedup (median, range)",
            title=f"target {label} of gap (acc {part['target']:.2f})",
        )
    axes[0][0].legend(fontsize=6, title="white centre: a seed never reached", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-effopd-map"))
    parser.add_argument("--task", default="arith")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1.7e-5, 5e-5, 1.5e-4, 5e-4, 1e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="evaluate every N steps")
    parser.add_argument("--n-prompts", type=int, default=128, help="validation prompts per eval")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="plain OPD's checkpoint cadence, for foresight analyze (default: the last step only)",
    )
    parser.add_argument(
        "--extra-fractions",
        nargs="*",
        type=float,
        default=[],
        help="more targets (fractions of the gap) added to targets.json, marked as added later",
    )
    parser.add_argument("--summarize-only", action="store_true", help="no new runs")

    args = parser.parse_args()
    library_verbosity()
    torch.set_num_threads(args.threads)
    config = Path("configs") / ("demo.yaml" if args.task == "arith" else f"{args.task}.yaml")
    targets = fix_targets(config, args)
    print(json.dumps(targets), flush=True)
    # Order: plain OPD and the published method over the whole grid first, our variant last, so a
    # cut-short grid loses the variant before it loses seeds or learning rates.
    wanted = [
        (m, lr, s) for m in args.methods if m != "effopd-kl" for s in args.seeds for lr in args.lrs
    ]
    wanted += [
        ("effopd-kl", lr, s) for s in args.seeds for lr in args.lrs if "effopd-kl" in args.methods
    ]
    wanted.sort(key=lambda k: (k[0] == "effopd-kl", k[2], k[1], k[0]))
    # Plain OPD is every ratio's reference: its finished runs are read even when --methods
    # leaves it out, and then never run.
    reference = [("opd", lr, s) for s in args.seeds for lr in args.lrs if "opd" not in args.methods]
    runs = []
    for method, lr, seed in wanted + reference:
        name = f"{method}-lr{lr:g}-seed{seed}"
        done = (args.out / "results" / f"{name}.json").exists()
        not_ours = args.summarize_only or method not in args.methods
        if not done and (not_ours or not claim(args.out / "claims" / name)):
            continue  # not asked for, or another process of this benchmark runs it
        runs.append(run_one(config, args, method, lr, seed))
        last = runs[-1]
        print(
            f"{time.strftime('%H:%M:%S')} {method} lr={lr:g} seed={seed} "
            f"final={last['curve'][-1]['accuracy']:.3f} process_s={last['process_s']:.0f}",
            flush=True,
        )
    for run in runs:
        name = f"{run['method']}-lr{run['lr']:g}-seed{run['seed']}"
        run["mean_step_s"] = mean_step_s(args.out / "runs" / name)
    summary = summarize(runs, targets)
    present = {run["method"] for run in runs}
    markdown = table(summary, targets, args.steps)
    (args.out / "table.md").write_text(markdown)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "targets": targets,
                "summary": summary,
                "args": {k: str(v) for k, v in vars(args).items()},
                "torch": torch.__version__,
                "machine": platform.machine(),
                "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
            },
            indent=1,
        )
    )
    plot(summary, MAP_METHODS, args.out / "effopd_regime_map.png")
    studied = [m for m in ["effopd-paper", *VARIANTS, "effopd-kl"] if m in present]
    if len(studied) > 1 and set(VARIANTS) & set(present):
        plot(summary, studied, args.out / "effopd_variants.png", refs=("same_lr",))
    print(markdown)


if __name__ == "__main__":
    main()
