"""The analysis entry points: `analyze` one series of checkpoints, `compare` several runs.

`analyze` writes a report folder:

    OUT/modules.csv      one row per (checkpoint step, tensor name): the tidy table
    OUT/overall.csv      per step: means over attention/MLP matrices, allocation, Spearman,
                         the trajectory's straightness
    OUT/kinds.csv        per step and module kind
    OUT/layers.csv       per step and layer
    OUT/trajectory.csv   per 2-D tensor: PCA of its top singular vector's trajectory
    OUT/probes/*.csv     one table per functional probe (only with a scorer)
    OUT/figures/*.png    drawn from the tables alone
    OUT/provenance.json  the run, base, settings, tool version and date the report header shows
    OUT/report.html      self-contained, drawn from the tables, figures and provenance.json alone
    OUT/metrics.json     summary; schema in docs/metrics.md
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.collect import collect
from foresight.dynamics.lora_series import open_checkpoint
from foresight.dynamics.patch import Scorer, load_model
from foresight.dynamics.probes import run_probes
from foresight.dynamics.provenance import provenance
from foresight.dynamics.reading import ModelFolder, describe
from foresight.dynamics.report import PROBE_TABLES, render, render_compare
from foresight.dynamics.tables import summarize, write_csv
from foresight.errors import UserError

SCHEMA_VERSION = 1


def analyze(
    base: Path,
    checkpoints: list[tuple[int, Path]],
    out_dir: Path,
    cfg: DynamicsConfig,
    scorer: Scorer | None = None,
) -> dict:
    """Measure every checkpoint's update against the base, run probes if scored, write a report.

    checkpoints: (step, folder) pairs; sorted by step here, the last being the final one.
    Returns the contents of OUT/metrics.json.
    """
    checkpoints = _checked(checkpoints)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_folder = ModelFolder(base)
    # A LoRA checkpoint (peft adapter) is read as base + B·A·scale (lora_series.py).
    series = [(step, open_checkpoint(path, base_folder)) for step, path in checkpoints]
    collected = collect(base_folder, series, cfg)
    start = time.perf_counter()
    tables = summarize(collected.modules, collected.straightness)
    timings = {**collected.timings, "time/allocation_s": time.perf_counter() - start}
    tables = {"modules": collected.modules, **tables, "trajectory": collected.trajectory}
    for name, rows in tables.items():
        write_csv(out_dir / f"{name}.csv", rows)
    start = time.perf_counter()
    probe_tables = _probe_tables(base, base_folder, series, cfg, scorer, out_dir / "probes")
    if probe_tables is not None:
        timings["time/probes_s"] = time.perf_counter() - start
    source = provenance(base, checkpoints)
    (out_dir / "provenance.json").write_text(json.dumps(source, indent=1))
    figures = render(out_dir)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "base": str(base),
        "provenance": source,
        "checkpoints": [
            {"step": step, "progress": step / checkpoints[-1][0], "path": str(path)}
            for step, path in checkpoints
        ],
        "config": cfg.model_dump(mode="json"),
        "overall": tables["overall"],
        "kinds": tables["kinds"],
        "layers": tables["layers"],
        "trajectory": _trajectory_by_kind(collected.trajectory),
        "probes": probe_tables,
        "tables": [f"{name}.csv" for name in tables]
        + [f"probes/{name}.csv" for name in probe_tables or {}],
        "figures": figures,
        "report": "report.html",
        "timings": timings,
    }
    # Written last and renamed into place: a whole metrics.json marks a finished analysis (compare
    # reuses such folders), so an interrupted write must not leave a half file under that name.
    temporary = out_dir / "metrics.json.tmp"
    temporary.write_text(json.dumps(summary, indent=1, allow_nan=False))
    os.replace(temporary, out_dir / "metrics.json")
    return summary


def compare(run_tables: dict[str, Path], out_dir: Path) -> dict:
    """Plot several runs' report folders (as `analyze` wrote them) on the same axes.

    run_tables: run label -> report folder. Writes OUT/figures/compare_*.png, OUT/report.html and
    OUT/compare.json, and returns the latter's contents.
    """
    missing = [
        str(path) for path in run_tables.values() if not (Path(path) / "overall.csv").is_file()
    ]
    if missing:
        raise UserError(
            f"{missing[0]} holds no overall.csv; pass report folders written by analyze."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = render_compare({label: Path(path) for label, path in run_tables.items()}, out_dir)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "runs": {label: str(path) for label, path in run_tables.items()},
        "figures": figures,
        "report": "report.html",
    }
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=1))
    return summary


def _probe_tables(
    base: Path,
    base_folder: ModelFolder,
    series: list[tuple[int, ModelFolder]],
    cfg: DynamicsConfig,
    scorer: Scorer | None,
    probe_dir: Path,
) -> dict[str, list[dict]] | None:
    """Run the probes and write probe_dir/<name>.csv, or None without a scorer.

    Either way, probe tables an earlier run left in probe_dir are removed first, since the report
    draws every probe table it finds.
    """
    for name in PROBE_TABLES:
        (probe_dir / f"{name}.csv").unlink(missing_ok=True)
    if scorer is None or not cfg.probes:
        return None
    model = load_model(base)
    tables = run_probes(model, describe(base_folder, cfg.name_pattern), series, cfg, scorer)
    probe_dir.mkdir(exist_ok=True)
    for name, rows in tables.items():
        write_csv(probe_dir / f"{name}.csv", rows)
    return tables


def _checked(checkpoints: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
    """Checkpoints sorted by step; a UserError for none, repeated steps or a final step of 0."""
    if not checkpoints:
        raise UserError("No checkpoints were given; pass at least one checkpoint folder.")
    ordered = sorted((int(step), Path(path)) for step, path in checkpoints)
    steps = [step for step, _ in ordered]
    if len(set(steps)) != len(steps):
        raise UserError(f"Checkpoint steps {steps} repeat; pass each step's checkpoint once.")
    if steps[-1] <= 0:
        raise UserError(
            "The final checkpoint's step must be positive, since progress is step / final step; "
            "pass checkpoints with their training steps."
        )
    return ordered


def _trajectory_by_kind(trajectory: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean PCA shares per module kind (None where no module of the kind moved)."""
    result = {}
    for kind in dict.fromkeys(row["kind"] for row in trajectory):
        rows = [row for row in trajectory if row["kind"] == kind]
        result[kind] = {}
        for key in ("dynamics/pca_pc1", "dynamics/pca_pc12"):
            values = [row[key] for row in rows if row[key] is not None]
            result[kind][key] = sum(values) / len(values) if values else None
    return result
