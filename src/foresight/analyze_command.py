"""`foresight analyze`: the weight-dynamics report of a run or of any series of HF checkpoints.

    foresight analyze RUN --out DIR                      # RUN/checkpoints/step-XXXXXX
    foresight analyze BASE CKPT_1 ... CKPT_N --out DIR   # steps from trainer_state.json or names
    foresight analyze BASE final other --steps 500,100   # folders with any names, steps given
    foresight analyze --compare RUN_A RUN_B --out DIR    # a report per run + comparison
    foresight analyze RUN --probes --set dynamics.window=4

The main app registers `analyze_command` with `app.command("analyze")(analyze_command)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from foresight.config import apply_override, describe_error
from foresight.config_sections import DynamicsConfig, TaskConfig
from foresight.errors import UserError
from foresight.log import QuietFlag, VerboseFlag, stage

# torch, matplotlib and the analysis modules are imported inside the functions: the CLI imports
# this module at startup to register the command, and `foresight --help` should not pay for them.


def analyze_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="RUN, or BASE CKPT..., or with --compare several RUN folders."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")] = Path(
        "runs/analysis"
    ),
    base: Annotated[
        Path | None,
        typer.Option(
            help="Base model folder of run folders (default: their config's model.student)."
        ),
    ] = None,
    compare_runs: Annotated[
        bool, typer.Option("--compare", help="Every path is a run; plot them on the same axes.")
    ] = False,
    probes: Annotated[
        bool, typer.Option("--probes", help="Also run the functional probes through a task scorer.")
    ] = False,
    task: Annotated[
        str | None, typer.Option(help="Task that scores the probes (default: the run's task).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: dynamics.key=value.")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="BASE CKPT... form: the checkpoints' steps in order, e.g. 100,200,500."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out (its files are replaced).")
    ] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Measure what training did to the weights: metrics, tables, figures and report.html."""
    from foresight.dynamics.analysis import compare

    for path in paths:
        if not path.exists():
            raise UserError(f"No such folder: {path}; check the path.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(
            f"{out} is not empty; pass --overwrite to replace its report, or a new --out."
        )
    given_steps = _parse_steps(steps, len(paths) - 1) if steps is not None else None
    console = Console()
    if compare_runs:
        reports = {}
        for run in paths:
            if run.name in reports:
                raise UserError(f"Two runs are named '{run.name}'; rename one folder or copy it.")
            reports[run.name] = out / run.name
            with stage(f"analyze {run.name}"):
                _analyze_one([run], reports[run.name], base, probes, task, overrides, console, None)
        compare(reports, out)
        console.print(f"comparison of {len(reports)} runs: {out / 'report.html'}")
        return
    with stage("analyze"):
        _analyze_one(paths, out, base, probes, task, overrides, console, given_steps)


def _parse_steps(text: str, expected: int) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--steps {text} is not a comma-separated list of integers.") from None
    if len(steps) != expected:
        raise UserError(
            f"--steps gives {len(steps)} steps for {expected} checkpoint folders; give one each."
        )
    return steps


def _analyze_one(
    paths: list[Path],
    out: Path,
    base: Path | None,
    probes: bool,
    task: str | None,
    overrides: list[str] | None,
    console: Console,
    given_steps: list[int] | None,
) -> None:
    from foresight.dynamics.analysis import analyze
    from foresight.dynamics.reading import checkpoints_of, run_config, step_of

    run_cfg: dict[str, Any] = {}
    if len(paths) == 1:
        if given_steps is not None:
            raise UserError(
                "--steps applies to the BASE CKPT... form; a run folder names its steps."
            )
        checkpoints = checkpoints_of(paths[0])
        # With --base a run folder from another trainer may lack our config.yaml.
        has_config = (paths[0] / "config.yaml").is_file()
        run_cfg = run_config(paths[0]) if base is None or has_config else {}
        base = base or _run_base(run_cfg, paths[0])
    else:
        if base is not None:
            raise UserError("Pass the base either as the first path or with --base, not both.")
        steps = given_steps or [step_of(path) for path in paths[1:]]
        base, checkpoints = paths[0], sorted(zip(steps, paths[1:]))
    cfg = _dynamics_config(run_cfg.get("dynamics") or {}, overrides or [])
    scorer = _scorer(run_cfg, task, base, cfg) if probes else None
    summary = analyze(base, checkpoints, out, cfg, scorer)
    final = summary["overall"][-1]
    console.print(
        f"{len(checkpoints)} checkpoints of {base}: final top-1% energy "
        f"{_fmt(final.get('dynamics/top1pct_energy'))}, effective rank "
        f"{_fmt(final.get('dynamics/effective_rank'))}; report: {out / 'report.html'}"
    )


def _run_base(run_cfg: dict[str, Any], run_dir: Path) -> Path:
    from foresight.hub import is_hub_id, model_folder  # huggingface_hub: only when needed

    model = run_cfg.get("model") or {}
    student = model.get("student")
    if student and is_hub_id(student):  # its snapshot in the Hugging Face cache
        return model_folder(student, "student", model.get("student_revision"))
    if not student or not Path(student).is_dir():
        raise UserError(
            f"The base model of run {run_dir} ({student}) is not a folder here; "
            "pass it with --base."
        )
    return Path(student)


def _dynamics_config(raw: dict[str, Any], overrides: list[str]) -> DynamicsConfig:
    tree = {"dynamics": dict(raw)}
    for assignment in overrides:
        if not assignment.startswith("dynamics."):
            raise UserError(
                f"Override '{assignment}' is not a dynamics setting; "
                "write --set dynamics.key=value."
            )
        apply_override(tree, assignment)
    try:
        return DynamicsConfig.model_validate(tree["dynamics"])
    except ValidationError as err:
        raise UserError(describe_error(err, "dynamics settings")) from None


def _scorer(run_cfg: dict[str, Any], task: str | None, base: Path, cfg: DynamicsConfig):
    """The task's Scorer (foresight.dynamics.patch.Scorer) for the probes."""
    from foresight.train.evaluate import task_scorer

    if task is None and "task" not in run_cfg:
        raise UserError("--probes needs a task to score with; pass --task NAME.")
    try:
        task_cfg = TaskConfig(name=task) if task else TaskConfig.model_validate(run_cfg["task"])
    except ValidationError as err:
        raise UserError(describe_error(err, "task")) from None
    teacher = (run_cfg.get("model") or {}).get("teacher")
    return task_scorer(task_cfg, base, cfg.n_prompts, Path(teacher) if teacher else None)


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"
