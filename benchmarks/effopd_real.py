"""EffOPD and plain OPD on a real model, SmolLM2-135M-Instruct, across learning rates (issue #18).

The task is `foresight demo --real`'s privileged-context self-distillation. The teacher is the model
told "Begin your reply with 'Hello!'", and the student is the same model, never told. Here it is
trained in full (no LoRA), with float32 master weights. The runs, each from the same model, are:
  opd@LOW, opd@HIGH   plain OPD at a low learning rate (the paper's range) and a higher one
  effopd-paper@LOW    EffOPD as published, at the low rate: the accuracy of 1 sample at T=1 on 50
                      train prompts, m = 2, 4, 6, 8, 10, accepted on >=
The score is the greedy behavior rate on the validation questions, every --every steps. Before any
run, the base (untold) and teacher (told) rates fix the targets: base + 50% and + 80% of the gap
(targets.json). A run that never reaches a target counts as the step budget.

After each run, `foresight analyze` measures its checkpoints (straightness and the rest) into
OUT/analysis/<run>. The optimizer state is then deleted from every checkpoint but the last, to keep
the disk in bounds (about 1 GB each): those runs can still be analyzed but not resumed. Results
(OUT/results/<run>.json) are written as each run finishes, and a rerun skips those. Several
processes of the same command share the runs. A last call with --summarize-only writes
OUT/table.md, OUT/results.json and OUT/effopd_real.png.

Needs `make models/smollm2-135m-instruct`. Run:
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/effopd_real.py --out runs/bench-effopd-real
  (on a GPU: --device cuda)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from effopd import PAPER, run_record  # benchmarks/effopd.py, next to this file
from effopd_map import claim  # benchmarks/effopd_map.py
from effopd_straightness import analyzed  # benchmarks/effopd_straightness.py

from foresight.config import Config, load_config
from foresight.demo_real import told, write_prompts
from foresight.log import library_verbosity
from foresight.models import load_model, load_tokenizer
from foresight.tasks import load_task
from foresight.train.evaluate import evaluate
from foresight.train.loop import train

FRACTIONS = (0.5, 0.8)


def config(args: argparse.Namespace, extra: list[str]) -> Config:
    model = str(args.model)
    return load_config(
        Path("configs/real.yaml"),
        [
            f"model.student={model}",
            f"model.teacher={model}",
            f"model.device={args.device}",
            f"model.teacher_device={args.device}",
            f"task.path={args.out / 'prompts.jsonl'}",
            "lora.enabled=false",
            f"rollout.prompts_per_step={args.prompts_per_step}",
            f"eval.n_prompts={args.n_prompts}",
            f"train.threads={args.threads}",
            "log.progress=false",
            *extra,
        ],
    )


def fix_targets(args: argparse.Namespace) -> dict:
    """Greedy behavior rate of the untold base and the told teacher on the validation questions,
    and the targets, computed once before any run and kept."""
    path = args.out / "targets.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = config(args, [])
    task = load_task(cfg.task)
    model = load_model(cfg.model.student, "student", device=args.device).eval()
    tokenizer = load_tokenizer(cfg.model.student, "student", cfg.model.chat_template)

    def rate(scored_task) -> float:
        return evaluate(
            model,
            tokenizer,
            scored_task,
            cfg.eval.split,
            cfg.eval.n_prompts,
            cfg.rollout.max_new_tokens,
            cfg.eval.batch_size,
            sampled=False,
        )["eval/accuracy"]

    base, teacher = rate(task), rate(told(task, cfg.task.teacher_prompt_template))
    saved = {
        "base": base,
        "teacher": teacher,
        "targets": {f"{int(f * 100)}%": base + f * (teacher - base) for f in FRACTIONS},
        "n_prompts": cfg.eval.n_prompts,
        "fixed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(saved, indent=1))
    return saved


def methods(args: argparse.Namespace) -> dict[str, tuple[float, list[str]]]:
    low, high = args.lrs
    return {
        f"opd@{low:g}": (low, []),
        f"opd@{high:g}": (high, []),
        f"effopd-paper@{low:g}": (low, PAPER),
    }


def run_one(args: argparse.Namespace, method: str, seed: int) -> dict:
    name = f"{method}-seed{seed}"
    result_path = args.out / "results" / f"{name}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    lr, extra = methods(args)[method]
    run_dir = args.out / "runs" / name
    cfg = config(
        args,
        [
            f"optim.lr={lr}",
            f"train.seed={seed}",
            f"train.steps={args.steps}",
            f"train.out_dir={run_dir}",
            f"train.checkpoint_every={args.checkpoint_every}",
            "train.checkpoint_at=[1,2,3]",
            f"eval.every={args.every}",
            *extra,
        ],
    )
    started = time.time()
    train(cfg, overwrite=True)
    train_s = time.time() - started
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    for checkpoint in checkpoints[:-1]:  # disk: analysis needs the weights only
        (checkpoint / "trainer_state.pt").unlink(missing_ok=True)
    shutil.rmtree(args.out / "analysis" / name, ignore_errors=True)  # from an earlier, cut run
    result = {
        **run_record(run_dir, method, lr, seed, args.steps),
        "train_s": train_s,
        "straightness": analyzed(run_dir, args.out / "analysis" / name),
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result))
    return result


def reach(run: dict, target: float) -> tuple[int, bool, float]:
    """Steps and wall seconds (steps plus EffOPD's searches) to the target; the budget and the
    whole run when never reached."""
    hit = next((p for p in run["curve"] if p["accuracy"] >= target), None)
    if hit is None:
        return run["steps"], False, run["curve"][-1]["wall_s"]
    return hit["step"], True, hit["wall_s"]


def spread(values: list[float], unit: str = "") -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3g}{unit} [{min(values):.3g}, {max(values):.3g}]"


def table(runs: list[dict], targets: dict, args: argparse.Namespace) -> str:
    low = args.lrs[0]
    header = "| method | seeds | " + " | ".join(
        f"steps to {label} ({t:.2f}) | reached | speedup vs opd@{low:g} | wall s to {label}"
        for label, t in targets["targets"].items()
    )
    header += (
        " | final rate | accepted m | median segment cosine | early direction share (first "
        "checkpoint) |"
    )
    columns = 6 + 4 * len(targets["targets"])
    lines = [header, "|" + "---|" * columns]
    by_key = {(r["method"], r["seed"]): r for r in runs}
    for method in methods(args):
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        cells = [method, str(len(mine))]
        for target in targets["targets"].values():
            reached = [reach(r, target) for r in mine]
            paired = [
                reach(by_key[(f"opd@{low:g}", r["seed"])], target)[0] / reach(r, target)[0]
                for r in mine
                if (f"opd@{low:g}", r["seed"]) in by_key
            ]
            cells += [
                spread([s for s, _, _ in reached]),
                f"{sum(ok for _, ok, _ in reached)}/{len(mine)}",
                spread(paired, "x"),
                spread([wall for _, _, wall in reached]),
            ]
        accepted = Counter()
        for r in mine:
            accepted.update(r["accepted"])
        first_share = [r["straightness"]["early_direction_share"][0][1] for r in mine]
        cosines = [r["straightness"]["median_segment_cosine"] for r in mine]
        cells += [
            spread([r["curve"][-1]["accuracy"] for r in mine]),
            ", ".join(f"{m}:{n}" for m, n in accepted.items()) or "-",
            spread([c for c in cosines if c is not None]),
            spread(first_share),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], targets: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 3.6))
    colors = {method: f"C{i}" for i, method in enumerate(methods(args))}
    for run in sorted(runs, key=lambda r: (r["method"], r["seed"])):
        steps = [p["step"] for p in run["curve"]]
        rates = [p["accuracy"] for p in run["curve"]]
        style = "-" if run["seed"] == min(args.seeds) else "--"
        axis.plot(steps, rates, style, color=colors[run["method"]], marker="o", markersize=3,
                  label=f"{run['method']} seed {run['seed']}")  # fmt: skip
    for label, target in targets["targets"].items():
        axis.axhline(target, color="k", linewidth=0.6, linestyle=":")
        axis.annotate(f"target {label}", (0, target), fontsize=7, va="bottom")
    axis.set(xlabel="optimizer step", ylabel="behavior rate (greedy, val)", ylim=(-0.03, 1.03))
    axis.set_title("SmolLM2-135M-Instruct, full fine-tuning", fontsize=9)
    axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out / "effopd_real.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-effopd-real"))
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--lrs", nargs=2, type=float, default=[1e-5, 1e-4], metavar=("LOW", "HIGH"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=3, help="evaluate every N steps")
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--n-prompts", type=int, default=48, help="validation questions per eval")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--summarize-only", action="store_true", help="no new runs")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} holds no model; run `make models/smollm2-135m-instruct`.")
    library_verbosity()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = args.out / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    targets = fix_targets(args)
    print(json.dumps(targets), flush=True)
    runs = []
    for seed in args.seeds:
        for method in methods(args):
            name = f"{method}-seed{seed}"
            done = (args.out / "results" / f"{name}.json").exists()
            if not done and (args.summarize_only or not claim(args.out / "claims" / name)):
                continue  # another process runs it
            runs.append(run_one(args, method, seed))
            print(f"{time.strftime('%H:%M:%S')} {name} curve={runs[-1]['curve']}", flush=True)
    markdown = table(runs, targets, args)
    (args.out / "table.md").write_text(markdown)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "targets": targets,
                "runs": runs,
                "args": {k: str(v) for k, v in vars(args).items()},
                "torch": torch.__version__,
                "machine": platform.machine(),
                "device": args.device,
            },
            indent=1,
        )
    )
    plot(runs, targets, args)
    print(markdown)


if __name__ == "__main__":
    main()
