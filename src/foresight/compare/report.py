"""OUT/report.html of `foresight compare`: Table 1 per method, the figures, and the claims table.

Self-contained (figures as base64 data URIs) and drawn from the analysis folders, the runs'
metrics.jsonl and the claims rows alone. OUT/summary.json holds the same numbers. Numbers have 3
significant digits and spreads 2 (foresight.dynamics.labels: "0.0589 ± 0.00055").
"""

from __future__ import annotations

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
from foresight.dynamics.labels import fmt as fmt_number
from foresight.dynamics.labels import fmt_spread, label
from foresight.dynamics.report import figure_html, header_html, load_tables, write_page

TABLE1 = ("spectral_norm", "spectral_ratio", "effective_rank", "top1pct_energy")

FIGURES = {
    "accuracy": (
        "Accuracy during training",
        (
            "Held-out accuracy against optimizer steps and against training seconds (sampling, "
            "scoring and update; evaluation excluded). Lines: mean over seeds; bands: min to max."
        ),
    ),
    "alignment": (
        "How early the direction is fixed",
        (
            "How early each method's update points where it ends: alignment of the top-20 "
            "singular vectors (left) and subspace overlap (right) with the method's own final "
            "update, both 1 at the final checkpoint by definition. The dotted line marks 30% of training."
        ),
    ),
    "allocation": (
        "Where the update went",
        (
            "Where the update went at the end: each layer's share of the squared update (left) and "
            "each module kind's (right)."
        ),
    ),
    "window": (
        "Which layers matter: sliding-window probe",
        (
            "Only the MLP (or only the attention) update of a window of layers is applied to the "
            "base; the share of the final gain it recovers."
        ),
    ),
    "scaling": (
        "Scaling and rescaling the update",
        (
            "Norm-matched scaling (left): accuracy of W_base + alpha dW_T against the update norm, "
            "one line per seed. Rescaling (right): each checkpoint's per-module update rescaled to the "
            "final norms; the share of the final gain it recovers."
        ),
    ),
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
    reports = ", ".join(
        f"<a href='analysis/{run.label}/report.html'>{html.escape(run.label)}</a>" for run in runs
    )
    body = [
        header_html(provenance_rows(out, runs), {}),
        f"<p>Each run's own weight-dynamics report: {reports}.</p>",
        "<h2>Table 1: the final update</h2>",
        table1_html(measures),
    ]
    body += [figure_html(fig_dir, stem, FIGURES[stem]) for stem in stems]
    body += ["<h2>Claims</h2>", claims_html(claims)]
    write_page(out, "OPD, RL and SFT from the same base", body)


def provenance_rows(out: Path, runs: list[PlannedRun]) -> list[tuple[str, str]]:
    """The header's facts: folder, base, teacher, task, and each method's training settings."""
    first = runs[0].cfg
    methods = {}
    for run in runs:  # seed-major: the first run of each method stands for its settings
        cfg = run.cfg
        group = f", groups of {cfg.rollout.group_size}" if cfg.rollout.group_size > 1 else ""
        methods.setdefault(
            run.method, f"{run.method}: loss {cfg.loss.kind}, lr {fmt_number(cfg.optim.lr)}{group}"
        )
    return [
        ("Comparison", str(out)),
        ("Base model", str(first.model.student)),
        ("Teacher", str(first.model.teacher)),
        ("Task", first.task.name),
        (
            "Runs",
            f"{len(runs)}: seeds {', '.join(str(s) for s in sorted({r.seed for r in runs}))}, each "
            + f"{first.train.steps} optimizer steps of {first.rollout.prompts_per_step} prompts",
        ),
        ("Methods", "; ".join(methods.values())),
    ]


def fmt(summary: dict) -> str:
    """'mean ± sd (n=3)' of a claims/measures summary: 3 significant digits, the sd 2; no sd with
    one seed."""
    if summary["mean"] is None:
        return "n/a"
    return f"{fmt_spread(summary['mean'], summary['sd'])} (n={summary['n']})"


def table1_html(measures: dict[str, list[dict]]) -> str:
    head = "".join(f"<th>{html.escape(label('dynamics/' + key))}</th>" for key in TABLE1)
    rows = []
    for method, per_seed in measures.items():
        cells = "".join(
            f"<td>{fmt(summarize([m[k] for m in per_seed if m[k] is not None]))}</td>"
            for k in TABLE1
        )
        rows.append(f"<tr><td>{method}</td>{cells}</tr>")
    return f"<table class='data'><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def claims_html(claims: list[dict]) -> str:
    rows = []
    for row in claims:
        methods = [k for k in ("opd", "rl", "sft") if k in row]
        numbers = "; ".join(f"{m}: {fmt(row[m])}" for m in methods)
        sign = "+" if row["d"] is not None and row["d"] > 0 else ""
        if row["d"] is None:
            interval = "n/a"
        elif row["half_width"] is None:
            interval = f"{sign}{fmt_number(row['d'])} (no interval with one seed)"
        else:
            interval = sign + fmt_spread(row["d"], row["half_width"])
        rows.append(
            f"<tr><td>{html.escape(row['claim'])}</td><td>{html.escape(MEASURES[row['measure']])}"
            f"</td><td>{numbers}</td><td>{interval}</td><td><b>{row['verdict']}</b></td></tr>"
        )
    head = (
        "<table class='data'><tr><th>claim</th><th>measure</th><th>per method</th>"
        "<th>difference, 95% interval</th><th>verdict</th></tr>"
    )
    rule = (
        "<p class='note'>Verdict rule (foresight/compare/claims.py): holds when the whole 95% Welch "
        "interval of the difference lies on the claimed side, does not hold when it lies on the "
        "other side, inconclusive otherwise or with fewer than 2 seeds. Numbers: mean ± sd over "
        "seeds (n = seeds); values have 3 significant digits, spreads 2.</p>"
    )
    return head + "".join(rows) + "</table>" + rule
