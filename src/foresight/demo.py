"""The demo: OPD from the committed base toward the committed teacher on one embedded task.

Evaluates base and teacher on the test split, distills (plain OPD in RUN/opd, and the same run with
EffOPD as published in RUN/effopd), evaluates the students, and writes RUN/summary.json plus a
table on the console.

Run: foresight demo            (or `make demo` from a fresh clone)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from foresight.checkpoint import free_run_dir
from foresight.config import Config, load_config
from foresight.errors import UserError
from foresight.hub import model_folder
from foresight.log import read_metrics, stage
from foresight.models import load_model, load_tokenizer
from foresight.tasks import load_task
from foresight.train.evaluate import evaluate
from foresight.train.loop import train

TEST_PROMPTS = 500


def test_accuracy(
    cfg: Config, model: str | Path, role: str, n_prompts: int, revision: str | None = None
) -> float:
    task = load_task(cfg.task)
    scores = evaluate(
        load_model(model, role, revision=revision),
        load_tokenizer(model, role, revision=revision),
        task,
        "test",
        n_prompts,
        cfg.rollout.max_new_tokens,
        cfg.eval.batch_size,
        sampled=False,
    )
    return scores["eval/accuracy"]


def distill(
    cfg: Config, extra: list[str], run_dir: Path, config_path: Path, n_prompts: int
) -> dict:
    """One OPD run into run_dir; its final student's test accuracy and wall seconds."""
    started = time.perf_counter()
    run_cfg = load_config(config_path, [*extra, f"train.out_dir={run_dir}"])
    with stage("training"):
        train(run_cfg)
    final = run_dir / "checkpoints" / f"step-{run_cfg.train.steps:06d}"
    accepted = [
        row["effopd/accepted_multiplier"]
        for row in read_metrics(run_dir)
        if "effopd/accepted_multiplier" in row
    ]
    with stage("test"):
        accuracy = test_accuracy(cfg, final, "student", n_prompts)
    return {
        "accuracy": accuracy,
        "train_seconds": time.perf_counter() - started,
        "accepted_multipliers": accepted,
    }


def run_demo(
    config_path: Path,
    overrides: list[str],
    out_dir: Path,
    effopd: bool = True,
    test_prompts: int = TEST_PROMPTS,
) -> dict:
    """Plain OPD (RUN/opd) and, beside it, the same run with EffOPD as published (RUN/effopd)."""
    started = time.perf_counter()
    run_dir = free_run_dir(out_dir)
    cfg = load_config(config_path, overrides)
    if cfg.model.teacher is None:
        raise UserError("The demo distills toward a teacher; set model.teacher to a model folder.")
    model = cfg.model
    # Each phase labels its progress lines: "demo · plain OPD · training · step 12/40".
    with stage("base model"):
        base_accuracy = test_accuracy(
            cfg, model.student, "student", test_prompts, model.student_revision
        )
    with stage("teacher"):
        teacher_accuracy = test_accuracy(
            cfg, model.teacher, "teacher", test_prompts, model.teacher_revision
        )
    with stage("plain OPD"):
        plain = distill(cfg, overrides, run_dir / "opd", config_path, test_prompts)
    gap = teacher_accuracy - base_accuracy
    summary = {
        "task": cfg.task.name,
        "base_accuracy": base_accuracy,
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": plain["accuracy"],
        "gap_closed": (plain["accuracy"] - base_accuracy) / gap if gap > 0 else float("nan"),
        "steps": cfg.train.steps,
        "opd_train_seconds": round(plain["train_seconds"], 1),
    }
    if effopd:
        with stage("EffOPD"):
            jumped = distill(
                cfg,
                [*overrides, "effopd.enabled=true"],
                run_dir / "effopd",
                config_path,
                test_prompts,
            )
        summary |= {
            "effopd_student_accuracy": jumped["accuracy"],
            "effopd_train_seconds": round(jumped["train_seconds"], 1),
            "effopd_accepted_multipliers": jumped["accepted_multipliers"],
        }
    with stage("analysis of plain OPD"):
        report = analyze_run(cfg, run_dir / "opd", run_dir / "analysis")
    summary |= {
        "analysis_report": str(report),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "test_prompts": test_prompts,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    return summary


def analyze_run(cfg: Config, run: Path, out: Path) -> Path:
    """`foresight analyze RUN`: what the OPD run did to the weights, as report.html."""
    from foresight.dynamics.analysis import analyze
    from foresight.dynamics.reading import checkpoints_of

    base = model_folder(cfg.model.student, "student", cfg.model.student_revision)
    analyze(base, checkpoints_of(run), out, cfg.dynamics, None)
    return out / "report.html"


def print_summary(summary: dict) -> None:
    table = Table(
        title=f"OPD demo on '{summary['task']}' (greedy pass@1, {summary['test_prompts']} "
        "held-out test prompts)"
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key in ("task", "test_prompts"):
            continue
        text = f"{value:.3f}" if isinstance(value, float) and "seconds" not in key else str(value)
        table.add_row(key, text)
    Console().print(table)
