"""The demo: OPD from the committed base toward the committed teacher on one embedded task.

Evaluates base and teacher on the test split, distills, evaluates the student, and writes
RUN/summary.json plus a table on the console.

Run: foresight demo            (or `make demo` from a fresh clone)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from foresight.config import Config, load_config
from foresight.evaluate import evaluate
from foresight.models import load_model, load_tokenizer
from foresight.opd.train import train
from foresight.tasks import load_task

TEST_PROMPTS = 500


def free_run_dir(wanted: Path) -> Path:
    """`wanted`, or the first `wanted-N` that does not exist: a demo never overwrites a run."""
    candidate, index = wanted, 2
    while candidate.exists():
        candidate = wanted.with_name(f"{wanted.name}-{index}")
        index += 1
    return candidate


def test_accuracy(cfg: Config, folder: Path, role: str) -> float:
    task = load_task(cfg.task)
    scores = evaluate(load_model(folder, role), load_tokenizer(folder, role), task, "test",
                      TEST_PROMPTS, cfg.rollout.max_new_tokens, cfg.eval.batch_size, sampled=False)
    return scores["eval/accuracy"]


def run_demo(config_path: Path, overrides: list[str], out_dir: Path) -> dict[str, float | int | str]:
    started = time.perf_counter()
    run_dir = free_run_dir(out_dir)
    cfg = load_config(config_path, [*overrides, f"train.out_dir={run_dir}"])
    base_accuracy = test_accuracy(cfg, cfg.model.student, "student")
    teacher_accuracy = test_accuracy(cfg, cfg.model.teacher, "teacher")
    train(cfg)
    final = run_dir / "checkpoints" / f"step-{cfg.train.steps:06d}"
    student_accuracy = test_accuracy(cfg, final, "student")
    gap = teacher_accuracy - base_accuracy
    summary = {
        "task": cfg.task.name, "base_accuracy": base_accuracy, "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "gap_closed": (student_accuracy - base_accuracy) / gap if gap > 0 else float("nan"),
        "steps": cfg.train.steps, "wall_seconds": round(time.perf_counter() - started, 1),
        "test_prompts": TEST_PROMPTS, "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, float | int | str]) -> None:
    table = Table(title=f"OPD demo on '{summary['task']}' (greedy pass@1, {summary['test_prompts']} "
                        "held-out test prompts)")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("base_accuracy", "teacher_accuracy", "student_accuracy", "gap_closed"):
        table.add_row(key, f"{summary[key]:.3f}")
    table.add_row("steps", str(summary["steps"]))
    table.add_row("wall_seconds", f"{summary['wall_seconds']:.1f}")
    table.add_row("run folder", str(summary["run_dir"]))
    Console().print(table)
