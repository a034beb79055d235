"""`foresight compare`: train OPD, RL and SFT from one base over several seeds, analyze every run,
and write one side-by-side report that ends with the claims table.

    foresight compare configs/compare.yaml            # the full comparison
    foresight compare configs/compare.yaml --quick    # 1 seed, short runs: minutes on 2 CPU cores
    foresight compare configs/compare.yaml --lr-scales 1,0.1   # at the tuned rates and at 1/10

OUT (compare.out_dir; `-quick` appended for --quick):
    OUT/runs/<method>-s<seed>/      ordinary run folders (checkpoints, metrics.jsonl)
    OUT/analysis/<method>-s<seed>/  `foresight analyze` report folders, probes included
    OUT/report.html, OUT/figures/   the comparison; OUT/claims.json, OUT/summary.json
    OUT/plan.json                   the settings and every run's config, checked on a rerun

With learning-rate regimes (compare.lr_scales other than [1.0]) each regime is such a comparison
in its own folder, REGIME = OUT/lr-x<scale> (lr-x1, lr-x0.1, ...), holding runs/, analysis/,
report.html, figures/, claims.json and summary.json as above. OUT itself then holds plan.json and
    OUT/report.html                 the claims table with a column per regime, linking each report
    OUT/claims_by_regime.json, .md  the same table as data and as markdown

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
from foresight.compare.report import regime_label, write_regimes, write_report
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
        _analyze(run, run.regime_dir / "analysis" / run.label, settings, console)
    regimes: dict[float, list[PlannedRun]] = {}
    for run in runs:  # regime-major: dicts keep the order of lr_scales
        regimes.setdefault(run.scale, []).append(run)
    claims_by_scale = {scale: _judge_regime(regime_runs) for scale, regime_runs in regimes.items()}
    nested = any(run.regime_dir != out for run in runs)
    if nested:
        write_regimes(out, regimes, claims_by_scale)
    console.print(f"compare: {len(runs)} runs in {time.perf_counter() - started:.0f} s")
    width = max(len(regime_label(scale)) for scale in regimes)
    for scale, claims in claims_by_scale.items():
        prefix = f"{regime_label(scale):<{width}}  " if nested else ""
        for row in claims:
            console.print(f"  {prefix}{row['verdict']:>13}: {row['claim']}", markup=False)
    console.print(f"report: {out / 'report.html'}")
    return out


def _judge_regime(runs: list[PlannedRun]) -> list[dict]:
    """Judge one regime's claims and write its claims.json and report, as one comparison."""
    regime_dir = runs[0].regime_dir
    measures: dict[str, list[dict]] = {}
    for run in runs:
        measures.setdefault(run.method, []).append(
            run_measures(regime_dir / "analysis" / run.label)
        )
    claims = judge(measures)
    (regime_dir / "claims.json").write_text(json.dumps(claims, indent=1))
    write_report(regime_dir, runs, measures, claims)
    return claims


def _check_plan(out: Path, settings: CompareConfig, runs: list[PlannedRun]) -> None:
    """Write OUT/plan.json, or check that an existing one describes the same comparison."""
    # Without regimes plan.json is what it was before lr_scales existed, so those folders resume.
    exclude = {"lr_scales"} if settings.lr_scales == [1.0] else None
    plan = {
        "compare": settings.model_dump(mode="json", exclude=exclude),
        # Keyed by the run's folder under OUT: opd-s0 without regimes, lr-x0.1/opd-s0 with them.
        "runs": {
            (run.regime_dir.relative_to(out) / run.label).as_posix(): run.cfg.model_dump(
                mode="json"
            )
            for run in runs
        },
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
