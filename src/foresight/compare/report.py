"""OUT/report.html of `foresight compare`: Table 1 per method, the figures, and the claims table.

Self-contained (figures as base64 data URIs) and drawn from the analysis folders, the runs'
metrics.jsonl and the claims rows alone. OUT/summary.json holds the same numbers.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from foresight.compare.claims import MEASURES, summarize
from foresight.compare.figures import (
    accuracy_figure,
    alignment_figure,
    allocation_figure,
    scaling_figure,
    window_figure,
)
from foresight.compare.plan import PlannedRun
from foresight.dynamics.report import load_tables

TABLE1 = ("spectral_norm", "spectral_ratio", "effective_rank", "top1pct_energy")

FIGURES = {
    "accuracy": "Held-out accuracy against optimizer steps and against training seconds (sampling,"
    " scoring and update; evaluation excluded). Lines: mean over seeds; bands: min to max.",
    "alignment": "How early each method's update points where it ends: alignment of the top-20 "
    "singular vectors (left) and subspace overlap (right) with the method's own final update. The "
    "dotted line marks 30% of training.",
    "allocation": "Where the update went at the end: each layer's share of the squared update "
    "(left) and each module kind's (right).",
    "window": "Sliding-window probe: only the MLP (or only the attention) update of a window of "
    "layers is applied to the base; the share of the final gain it recovers.",
    "scaling": "Norm-matched scaling (left): accuracy of W_base + alpha dW_T against the update "
    "norm, one line per seed. Rescaling (right): each checkpoint's per-module update rescaled to "
    "the final norms; the share of the final gain it recovers.",
}


def write_report(
    out: Path, runs: list[PlannedRun], measures: dict[str, list[dict]], claims: list[dict]
) -> None:
    tables: dict[str, list] = {}
    run_dirs: dict[str, list[Path]] = {}
    for run in runs:
        tables.setdefault(run.method, []).append(load_tables(out / "analysis" / run.label))
        run_dirs.setdefault(run.method, []).append(Path(run.cfg.train.out_dir))
    fig_dir = out / "figures"
    stems = [accuracy_figure(run_dirs, fig_dir), alignment_figure(tables, fig_dir)]
    stems += [allocation_figure(tables, fig_dir), scaling_figure(tables, fig_dir)]
    if all(t.get("probe_window") for seeds in tables.values() for t in seeds):
        stems.append(window_figure(tables, fig_dir))
    summary = {"runs": [run.label for run in runs], "measures": measures, "claims": claims}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    first = runs[0].cfg
    intro = (
        f"{len(runs)} runs from the base {first.model.student} on task {first.task.name}: "
        f"{', '.join(measures)} with seeds {sorted({r.seed for r in runs})}, "
        f"{first.train.steps} optimizer steps of {first.rollout.prompts_per_step} prompts each, "
        "learning rates "
        + ", ".join(f"{r.method} {r.cfg.optim.lr:g}" for r in runs[: len(measures)])
        + ". Each run's own report: "
        + ", ".join(f"<a href='analysis/{r.label}/report.html'>{r.label}</a>" for r in runs)
        + "."
    )
    body = [f"<p>{intro}</p>", "<h2>Table 1: the final update</h2>", table1_html(measures)]
    for stem in stems:
        data = base64.b64encode((fig_dir / f"{stem}.png").read_bytes()).decode()
        body.append(
            f"<section><p>{html.escape(FIGURES[stem])}</p>"
            f'<img alt="{stem}" src="data:image/png;base64,{data}"></section>'
        )
    body += ["<h2>Claims</h2>", claims_html(claims)]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>foresight compare</title>"
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
        "img{max-width:100%}td,th{padding:2px 10px;text-align:left}"
        "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        "<h1>OPD, RL and SFT from the same base</h1>" + "".join(body) + "</body></html>"
    )
    (out / "report.html").write_text(page)


def fmt(summary: dict) -> str:
    """'mean ± sd (n)' of a claims/measures summary; sd left out with one seed."""
    if summary["mean"] is None:
        return "n/a"
    sd = f" ± {summary['sd']:.3g}" if summary["sd"] is not None else ""
    return f"{summary['mean']:.3g}{sd} (n={summary['n']})"


def table1_html(measures: dict[str, list[dict]]) -> str:
    head = "".join(f"<th>{key}</th>" for key in TABLE1)
    rows = []
    for method, per_seed in measures.items():
        cells = "".join(
            f"<td>{fmt(summarize([m[k] for m in per_seed if m[k] is not None]))}</td>"
            for k in TABLE1
        )
        rows.append(f"<tr><td>{method}</td>{cells}</tr>")
    return f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def claims_html(claims: list[dict]) -> str:
    rows = []
    for row in claims:
        methods = [k for k in ("opd", "rl", "sft") if k in row]
        numbers = "; ".join(f"{m}: {fmt(row[m])}" for m in methods)
        interval = (
            "n/a" if row["half_width"] is None else f"{row['d']:+.3g} ± {row['half_width']:.3g}"
        )
        rows.append(
            f"<tr><td>{html.escape(row['claim'])}</td><td>{html.escape(MEASURES[row['measure']])}"
            f"</td><td>{numbers}</td><td>{interval}</td><td><b>{row['verdict']}</b></td></tr>"
        )
    return (
        "<table><tr><th>claim</th><th>measure</th><th>per method</th><th>difference, 95% "
        "interval</th><th>verdict</th></tr>" + "".join(rows) + "</table><p>Verdict rule "
        "(foresight/compare/claims.py): holds when the whole 95% Welch interval of the difference "
        "lies on the claimed side, does not hold when it lies on the other side, inconclusive "
        "otherwise or with fewer than 2 seeds.</p>"
    )
