"""OUT/report.html of `foresight compare`: Table 1 per method, the figures, and the claims table.

Self-contained (figures as base64 data URIs) and drawn from the analysis folders, the runs'
metrics.jsonl and the claims rows alone. OUT/summary.json holds the same numbers. Numbers have 3
significant digits and spreads 2 (foresight.dynamics.labels: "0.0589 ± 0.00055").

With learning-rate regimes each regime's folder gets that report, and `write_regimes` writes the
index at OUT: report.html (the claims with a column per regime, linking each regime's report),
claims_by_regime.json and claims_by_regime.md.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from foresight.compare.claims import MEASURES, summarize
from foresight.compare.figures import (
    accuracy_figure,
    alignment_figure,
    allocation_figure,
    scaling_figure,
    window_figure,
)
from foresight.compare.plan import PlannedRun, regime_folder
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
    """The header's facts: folder, base, teacher, task, each method's training settings, and the
    learning-rate regimes when there are any but x1."""
    first = runs[0].cfg
    methods, lrs = {}, {}
    for run in runs:  # seed-major: the first run of each method stands for its settings
        cfg = run.cfg
        group = f", groups of {cfg.rollout.group_size}" if cfg.rollout.group_size > 1 else ""
        methods.setdefault(run.method, (f"{run.method}: loss {cfg.loss.kind}", group))
        lrs.setdefault(run.method, {})[fmt_number(cfg.optim.lr)] = None  # one per regime, in order
    settings = [
        f"{text}, lr {', '.join(lrs[method])}{group}" for method, (text, group) in methods.items()
    ]
    scales = list(dict.fromkeys(run.scale for run in runs))
    seeds = sorted({run.seed for run in runs})
    per_regime = f" ({len(runs) // len(scales)} per regime)" if len(scales) > 1 else ""
    regimes = []
    if scales != [1.0]:
        listed = ", ".join(f"×{scale:g}" for scale in scales)
        regimes = [("Learning rates", f"{listed} of each method's tuned rate (compare.lr_scales)")]
    return [
        ("Comparison", str(out)),
        ("Base model", str(first.model.student)),
        ("Teacher", str(first.model.teacher)),
        ("Task", first.task.name),
        (
            "Runs",
            f"{len(runs)}{per_regime}: seeds {', '.join(str(s) for s in seeds)}, each "
            + f"{first.train.steps} optimizer steps of {first.rollout.prompts_per_step} prompts",
        ),
        ("Methods", "; ".join(settings)),
        *regimes,
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


def interval_text(row: dict) -> str:
    """A claims row's difference and 95% interval: '+0.123 ± 0.045'."""
    if row["d"] is None:
        return "n/a"
    sign = "+" if row["d"] > 0 else ""
    if row["half_width"] is None:
        return f"{sign}{fmt_number(row['d'])} (no interval with one seed)"
    return sign + fmt_spread(row["d"], row["half_width"])


RULE = (
    "Verdict rule (foresight/compare/claims.py): holds when the whole 95% Welch interval of the "
    "difference lies on the claimed side, does not hold when it lies on the other side, "
    "inconclusive otherwise or with fewer than 2 seeds."
)


def claims_html(claims: list[dict]) -> str:
    rows = []
    for row in claims:
        methods = [k for k in ("opd", "rl", "sft") if k in row]
        numbers = "; ".join(f"{m}: {fmt(row[m])}" for m in methods)
        rows.append(
            f"<tr><td>{html.escape(row['claim'])}</td><td>{html.escape(MEASURES[row['measure']])}"
            f"</td><td>{numbers}</td><td>{interval_text(row)}</td>"
            f"<td><b>{row['verdict']}</b></td></tr>"
        )
    head = (
        "<table class='data'><tr><th>claim</th><th>measure</th><th>per method</th>"
        "<th>difference, 95% interval</th><th>verdict</th></tr>"
    )
    rule = (
        f"<p class='note'>{RULE} Numbers: mean ± sd over seeds (n = seeds); values have 3 "
        "significant digits, spreads 2.</p>"
    )
    return head + "".join(rows) + "</table>" + rule


def regime_label(scale: float) -> str:
    return f"lr ×{scale:g}"


def write_regimes(
    out: Path, regimes: dict[float, list[PlannedRun]], claims: dict[float, list[dict]]
) -> None:
    """OUT/claims_by_regime.json, OUT/claims_by_regime.md and the index OUT/report.html.

    regimes: scale -> that regime's runs; claims: scale -> its `judge` rows (the same claims in
    the same order for every regime).
    """
    table = claims_by_regime(claims)
    reports = {
        scale: Path(os.path.relpath(runs[0].regime_dir / "report.html", out)).as_posix()
        for scale, runs in regimes.items()
    }
    (out / "claims_by_regime.json").write_text(
        json.dumps(
            {"reports": {regime_folder(s): r for s, r in reports.items()}, "claims": table},
            indent=1,
        )
    )
    (out / "claims_by_regime.md").write_text(regimes_markdown(table, list(claims)))
    links = ", ".join(
        f"<a href='{html.escape(link)}'>{html.escape(regime_label(scale))}</a>"
        for scale, link in reports.items()
    )
    intro = (
        "<p>The whole comparison once per learning-rate regime: every method's tuned lr times the "
        "scale, with the same seeds, prompts, steps and checkpoints. Each regime's report: "
        f"{links}. This table as <a href='claims_by_regime.json'>JSON</a> and as "
        "<a href='claims_by_regime.md'>markdown</a>.</p>"
    )
    all_runs = [run for runs in regimes.values() for run in runs]
    body = [
        header_html(provenance_rows(out, all_runs), {}),
        intro,
        "<h2>Claims by learning-rate regime</h2>",
        regimes_html(table, reports),
    ]
    write_page(out, "OPD, RL and SFT from the same base, at several learning rates", body)


def claims_by_regime(claims: dict[float, list[dict]]) -> list[dict]:
    """One row per claim: text, measure and, per regime folder, verdict, d, half_width and the
    methods' summaries (mean, sd, n, values)."""
    rows = []
    for per_regime in zip(*claims.values(), strict=True):
        first = per_regime[0]
        row = {"claim": first["claim"], "measure": first["measure"], "regimes": {}}
        for scale, judged in zip(claims, per_regime, strict=True):
            methods = {m: judged[m] for m in ("opd", "rl", "sft") if m in judged}
            row["regimes"][regime_folder(scale)] = {
                "lr_scale": scale,
                "verdict": judged["verdict"],
                "d": judged["d"],
                "half_width": judged["half_width"],
                "methods": methods,
            }
        rows.append(row)
    return rows


def regimes_markdown(table: list[dict], scales: list[float]) -> str:
    """The claims as a markdown table: claim | one column per regime ('holds, +0.123 ± 0.045')."""
    head = "| claim | " + " | ".join(regime_label(s) for s in scales) + " |"
    lines = ["# Claims by learning-rate regime", "", head, "|---" * (len(scales) + 1) + "|"]
    for row in table:
        cells = [
            f"{cell['verdict']}, {interval_text(cell)}"
            for cell in (row["regimes"][regime_folder(s)] for s in scales)
        ]
        claim = row["claim"].replace("|", "\\|")  # a bare | would end the cell
        lines.append("| " + " | ".join([claim, *cells]) + " |")
    lines += ["", RULE + " Cells: verdict, then the difference ± the half-width of its interval."]
    return "\n".join(lines) + "\n"


def regimes_html(table: list[dict], reports: dict[float, str]) -> str:
    """The claims table with one column per regime, each headed by a link to its report."""
    head = "".join(
        f"<th><a href='{html.escape(link)}'>{html.escape(regime_label(scale))}</a></th>"
        for scale, link in reports.items()
    )
    rows = []
    for row in table:
        cells = "".join(
            f"<td><b>{html.escape(cell['verdict'])}</b><br>{interval_text(cell)}</td>"
            for cell in (row["regimes"][regime_folder(s)] for s in reports)
        )
        rows.append(
            f"<tr><td>{html.escape(row['claim'])}</td>"
            f"<td>{html.escape(MEASURES[row['measure']])}</td>{cells}</tr>"
        )
    note = (
        f"<p class='note'>{RULE} Cells: the verdict, then the difference and its 95% interval "
        "(3 significant digits, the half-width 2).</p>"
    )
    return (
        f"<table class='data'><tr><th>claim</th><th>measure</th>{head}</tr>{''.join(rows)}"
        f"</table>{note}"
    )
