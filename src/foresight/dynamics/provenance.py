"""Where a report's numbers come from: the run, its base, its settings, the tool and the paper.

`provenance(base, checkpoints)` is written by `analyze` as OUT/provenance.json and shown at the top
of report.html. When the checkpoints sit in a run folder (RUN/checkpoints/step-XXXXXX, as
`foresight train` writes them, or any trainer's run laid out that way), the run's saved
config.yaml gives the method and its settings and its foresight-run.json the date it was made;
what cannot be read is None, shown as "unknown".
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version
from pathlib import Path

import yaml

PAPER = {
    "title": "Learning to Foresee: Unveiling the Unlocking Efficiency of On-Policy Distillation",
    "arxiv": "2605.11739",
    "url": "https://arxiv.org/abs/2605.11739",
}
RUN_MARKER = "foresight-run.json"  # run_folder.RUN_MARKER; that module sits in a layer above


def run_folder_of(checkpoints: list[tuple[int, Path]]) -> Path | None:
    """RUN when every checkpoint is RUN/checkpoints/<name>, else None (folders from anywhere)."""
    parents = {Path(path).parent for _, path in checkpoints}
    if len(parents) != 1:
        return None
    parent = parents.pop()
    return parent.parent if parent.name == "checkpoints" else None


def provenance(base: Path, checkpoints: list[tuple[int, Path]]) -> dict:
    """The facts a report header shows; None where the run does not say."""
    run = run_folder_of(checkpoints)
    cfg = _run_config(run) if run is not None else {}

    def setting(section: str, key: str) -> object:
        return (cfg.get(section) or {}).get(key)

    method = setting("train", "method")
    if method is not None and setting("effopd", "enabled"):
        method = f"{method} + EffOPD"
    return {
        "run": None if run is None else str(run),
        "run_created": _created(run) if run is not None else None,
        "base": str(base),
        "base_source": _base_source(Path(base), run, setting("model", "student")),
        "teacher": setting("model", "teacher"),
        "steps": [step for step, _ in checkpoints],
        "method": method,
        "loss_kind": setting("loss", "kind"),
        "lr": setting("optim", "lr"),
        "train_steps": setting("train", "steps"),
        "batch": setting("rollout", "prompts_per_step"),
        "task": setting("task", "name"),
        "foresight_version": version("foresight"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "paper": PAPER,
    }


def _run_config(run: Path) -> dict:
    """RUN/config.yaml as a mapping; {} when absent or unreadable (a run from another trainer)."""
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _created(run: Path) -> str | None:
    try:
        return json.loads((run / RUN_MARKER).read_text()).get("created")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _base_source(base: Path, run: Path | None, student: object) -> str:
    """How the base relates to the run: its model.student, one of its checkpoints, or given."""
    if run is None:
        return "given on the command line (not a foresight run folder)"
    if student and Path(str(student)).resolve() == base.resolve():
        return "model.student in the run's config"
    if base.parent.resolve() == (run / "checkpoints").resolve():
        return f"the run's own checkpoint {base.name}"
    if student:
        return f"given; the run's config names model.student = {student}"
    return "given; the run has no readable config.yaml"
