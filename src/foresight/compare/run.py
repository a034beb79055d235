"""`foresight compare`: train OPD, RL and SFT from one base over several seeds, analyze every run,
and write one side-by-side report that ends with the claims table.

    foresight compare configs/compare.yaml            # the full comparison
    foresight compare configs/compare.yaml --quick    # 1 seed, short runs: minutes on 2 CPU cores

OUT (compare.out_dir; `-quick` appended for --quick):
    OUT/runs/<method>-s<seed>/      ordinary run folders (checkpoints, metrics.jsonl)
    OUT/analysis/<method>-s<seed>/  `foresight analyze` report folders, probes included
    OUT/report.html, OUT/figures/   the comparison; OUT/claims.json, OUT/summary.json

Interrupted, it picks up where it stopped: finished runs and analyses are reused, a run with
checkpoints is resumed. --overwrite starts from nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from foresight.checkpoint import list_checkpoints
from foresight.compare.claims import judge, run_measures
from foresight.compare.plan import CompareConfig, PlannedRun, load_plan
from foresight.compare.report import write_report
from foresight.errors import UserError
from foresight.hub import model_folder


def compare(
    path: Path,
    quick: bool = False,
    overrides: list[str] = (),
    overwrite: bool = False,
    console: Console | None = None,
) -> Path:
    """Run (or finish) the whole comparison; returns the folder holding report.html."""
    console = console or Console()
    settings, runs = load_plan(path, quick, list(overrides))
    out = settings.out_dir
    if overwrite and out.exists():
        shutil.rmtree(out)
    _check_plan(out, settings, runs)
    started = time.perf_counter()
    for run in runs:
        _train(run, console)
    for run in runs:
        _analyze(run, out / "analysis" / run.label, settings, console)
    measures: dict[str, list[dict]] = {}
    for run in runs:
        measures.setdefault(run.method, []).append(run_measures(out / "analysis" / run.label))
    claims = judge(measures)
    (out / "claims.json").write_text(json.dumps(claims, indent=1))
    write_report(out, runs, measures, claims)
    console.print(f"compare: {len(runs)} runs in {time.perf_counter() - started:.0f} s")
    for row in claims:
        console.print(f"  {row['verdict']:>13}: {row['claim']}", markup=False)
    console.print(f"report: {out / 'report.html'}")
    return out


def _check_plan(out: Path, settings: CompareConfig, runs: list[PlannedRun]) -> None:
    """Write OUT/plan.json, or check that an existing one describes the same comparison."""
    plan = {
        "compare": settings.model_dump(mode="json"),
        "runs": {run.label: run.cfg.model_dump(mode="json") for run in runs},
    }
    plan_path = out / "plan.json"
    if plan_path.is_file():
        saved = json.loads(plan_path.read_text())
        if saved != json.loads(json.dumps(plan)):
            raise UserError(
                f"{out} holds a comparison with other settings; pass --overwrite to replace it "
                "or set compare.out_dir to a new folder."
            )
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(
            f"{out} already holds files that are not a comparison; pass --overwrite or set "
            "compare.out_dir to a new folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    partial = plan_path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(plan, indent=1))
    os.replace(partial, plan_path)  # a killed write never leaves a half plan.json behind


def _train(run: PlannedRun, console: Console) -> None:
    from foresight.train.loop import train

    run_dir = Path(run.cfg.train.out_dir)
    checkpoints = list_checkpoints(run_dir) if run_dir.exists() else []
    if checkpoints and checkpoints[-1][0] == run.cfg.train.steps:
        console.print(f"{run.label}: finished earlier, reused")
        return
    console.print(f"{run.label}: training {run.cfg.train.steps} steps ({run.cfg.train.method})")
    train(run.cfg, resume=bool(checkpoints), overwrite=not checkpoints and run_dir.exists())


def _analyze(run: PlannedRun, out: Path, settings: CompareConfig, console: Console) -> None:
    from foresight.dynamics.analysis import analyze
    from foresight.train.evaluate import task_scorer

    summary_path = out / "metrics.json"
    checkpoints = list_checkpoints(Path(run.cfg.train.out_dir))
    if summary_path.is_file():
        done = json.loads(summary_path.read_text())["checkpoints"]
        if [c["step"] for c in done] == [step for step, _ in checkpoints]:
            console.print(f"{run.label}: analysis reused")
            return
    dynamics = run.cfg.dynamics
    base = model_folder(run.cfg.model.student, "student", run.cfg.model.student_revision)
    scorer = None
    if settings.probes:
        scorer = task_scorer(
            run.cfg.task, base, dynamics.n_prompts, None, run.cfg.rollout.max_new_tokens
        )
    console.print(f"{run.label}: analyzing {len(checkpoints)} checkpoints")
    analyze(base, checkpoints, out, dynamics, scorer)
