"""report.html from the report folder's tables and figures alone.

`render(report_dir)` reads the CSV tables, redraws every figure into report_dir/figures/ and writes
one self-contained report.html: figures are embedded as base64 data URIs (the PNG files stay
beside it too), each with a two-sentence explanation for a reader who has not read the paper.
No SVD is recomputed, so `render` re-renders a report in seconds.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

from foresight.dynamics.findings import findings
from foresight.dynamics.labels import fmt, label, one_at_final, unit
from foresight.dynamics.plots import compare_figures, make_figures
from foresight.dynamics.provenance import PAPER
from foresight.dynamics.tables import read_csv

Tables = dict[str, list[dict[str, object]]]

TABLES = ("modules", "overall", "kinds", "layers", "trajectory")
PROBE_TABLES = ("reference", "scaling", "embedding_swap", "window", "truncation", "rescaling")

# figure stem -> (title, explanation). dW is a weight's change from the base model.
EXPLANATIONS = {
    "metric_frobenius_rel": (
        "Relative update size",
        (
            "How far each weight matrix moved from the base model, as a fraction of its own size. "
            "Left: the mean over attention and MLP matrices and each module kind through training; "
            "right: the same per layer, one line per checkpoint."
        ),
    ),
    "metric_spectral_norm": (
        "Spectral norm",
        (
            "The largest singular value of the update, i.e. how much it can stretch any single "
            "input direction. It grows as training pushes consistently along one direction."
        ),
    ),
    "metric_spectral_ratio": (
        "Spectral ratio",
        (
            "The largest singular value divided by the update's total (Frobenius) size; 1 means the"
            " whole update is a single rank-1 direction. High values say the update is concentrated"
            " in very few directions."
        ),
    ),
    "metric_effective_rank": (
        "Effective rank",
        (
            "The exponential of the entropy of the normalised singular values: roughly, how many "
            "directions the update really uses. The paper finds on-policy distillation's updates "
            "10-20% lower in effective rank than RL's."
        ),
    ),
    "metric_top1pct_energy": (
        "Top-1% energy ratio",
        (
            "The share (square root of the squared-norm share) of the update carried by its top 1% "
            "of singular directions. Values near 1 mean a tiny fraction of directions holds nearly "
            "all of the change; the paper reports 92-95% for on-policy distillation."
        ),
    ),
    "metric_alignment": (
        "Alignment with the final update",
        (
            "For the top 20 singular directions, the mean absolute cosine between each checkpoint's"
            " k-th direction and the final update's k-th, so it is 1 by definition at the final "
            "checkpoint. If it is high early in training, the "
            "final direction was already visible early, which is what makes extrapolation (EffOPD) "
            "possible."
        ),
    ),
    "straightness": (
        "How straight the trajectory is",
        (
            "Circles: the cosine between the update segment that ends at a checkpoint and the one"
            " that starts there (1 = training went straight on; none at the final checkpoint); "
            "squares: the final update's projection onto each checkpoint's update direction, as a "
            "share of its length (1 by definition at the final checkpoint). Both treat the "
            "attention and MLP matrices, the tensors EffOPD extrapolates, as one vector."
        ),
    ),
    "family_energy": (
        "Energy in the top-k directions",
        (
            "The share of the update's squared size held by its k largest singular directions, for "
            "several k. Curves close to 1 at small k mean a low-rank update."
        ),
    ),
    "family_sparsity_abs": (
        "Coordinate sparsity (absolute)",
        (
            "The share of individual weights whose change is below a fixed threshold. A high share "
            "means the update is small in most coordinates even if it is not low-rank."
        ),
    ),
    "family_sparsity_rel": (
        "Coordinate sparsity (relative)",
        (
            "The share of individual weights whose change is below a fraction of the base weights' "
            "typical (RMS) size. It makes layers of different scale comparable."
        ),
    ),
    "family_overlap": (
        "Subspace overlap with the final update",
        (
            "How much of the space spanned by a checkpoint's top-k singular directions lies in the "
            "final update's top-k space (1 = the same space, as at the final checkpoint by "
            "definition; near 0 = unrelated). Unlike the alignment it ignores the order of "
            "directions inside the space."
        ),
    ),
    "allocation_kinds": (
        "Where the update goes: module kinds",
        (
            "Each module kind's share of the total squared update at each checkpoint. The paper "
            "finds on-policy distillation spends little on embeddings and more on MLPs than "
            "attention."
        ),
    ),
    "allocation_layers": (
        "Where the update goes: layers",
        (
            "Each layer's share of the total squared update (left, one line per checkpoint) and its"
            " split between attention and MLP at the final checkpoint (right). The paper reads a "
            "concentration in the middle layers as effort spent where reasoning happens."
        ),
    ),
    "allocation_spearman": (
        "How early the allocation settles",
        (
            "The Spearman rank correlation between each checkpoint's per-module update shares and "
            "the final checkpoint's (1 at the final one by definition). Values near 1 early on "
            "mean training decided where to put its "
            "update long before it finished."
        ),
    ),
    "trajectory_pca": (
        "Trajectory of the top direction",
        (
            "For each module, the top singular direction at every checkpoint is treated as a point,"
            " and PCA says how much of its movement lies along one or two axes. Values near 1 mean "
            "the direction drifted along a simple path rather than wandering."
        ),
    ),
    "probe_scaling": (
        "Scaling the final update",
        (
            "The final update multiplied by alpha from 0 (base model) to 1 (final model), scored "
            "against its size. It is the reference curve: how much score a given amount of update "
            "buys along the true direction."
        ),
    ),
    "probe_embedding_swap": (
        "Embedding swap",
        (
            "The final model with its token embeddings (or its output head) put back to the base "
            "model's. A small drop says the embedding update contributed little to the gain."
        ),
    ),
    "probe_window": (
        "Sliding-window intervention",
        (
            "Only the MLP (or only the attention) update of layers l-w..l+w is applied to the base "
            "model, for every centre layer l; bars show each layer's own update size. Where the "
            "score rises, those layers carry the useful part of the update (the paper's marginal "
            "utility)."
        ),
    ),
    "probe_truncation": (
        "Rank truncation",
        (
            "Each matrix's update keeps only its top (or bottom) k% of singular directions, "
            "rescaled to the full update's size. The paper finds the top 10% recovers over 95% of "
            "the gain while the bottom directions recover little."
        ),
    ),
    "probe_rescaling": (
        "Rescaling early checkpoints",
        (
            "Each checkpoint's update, module by module, stretched towards the final update's size "
            "(beta = 1 matches it fully), as the share of the final gain it recovers. A high value "
            "early says the direction was right and only the step length was missing."
        ),
    ),
    "compare_overall": (
        "Runs compared",
        (
            "The main summary metrics of several runs against training progress on shared axes. "
            "Differences in shape show how the training methods reshape the update."
        ),
    ),
    "compare_layers": (
        "Runs compared: allocation per layer",
        (
            "Each run's share of the squared update per layer at its final checkpoint, overall and "
            "for MLPs. It shows which run spends its update in which layers."
        ),
    ),
}


def load_tables(report_dir: Path) -> Tables:
    """The tables a report folder holds; probe tables under `probe_<name>` when present."""
    tables = {name: read_csv(report_dir / f"{name}.csv") for name in TABLES}
    for name in PROBE_TABLES:
        path = report_dir / "probes" / f"{name}.csv"
        if path.is_file():
            tables[f"probe_{name}"] = read_csv(path)
    return tables


def load_provenance(report_dir: Path) -> dict:
    """OUT/provenance.json as `analyze` wrote it; {} for a folder without one."""
    path = Path(report_dir) / "provenance.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def render(report_dir: Path) -> list[str]:
    """Redraw the figures and write report_dir/report.html; returns the figure file names."""
    tables = load_tables(report_dir)
    stems = make_figures(tables, report_dir / "figures")
    source = load_provenance(report_dir)
    steps = [row["step"] for row in tables["overall"]]
    body = [
        header_html(_analysis_rows(source, steps), source),
        f"<h2>In short</h2><p>{html.escape(findings(tables))}</p>",
        _summary(tables["overall"]),
        _tables_note(report_dir),
        *(figure_html(report_dir / "figures", stem) for stem in stems),
    ]
    write_page(report_dir, "Weight dynamics report", body)
    return [f"figures/{stem}.png" for stem in stems]


def render_compare(report_dirs: dict[str, Path], out_dir: Path) -> list[str]:
    """Figures and report.html comparing several runs' report folders on the same axes."""
    runs = {label: load_tables(path) for label, path in report_dirs.items()}
    stems = compare_figures(runs, out_dir / "figures")
    body = [
        _runs_table(report_dirs, out_dir),
        header_html([], {}),
        *(figure_html(out_dir / "figures", stem) for stem in stems),
    ]
    write_page(out_dir, "Weight dynamics: runs compared", body)
    return [f"figures/{stem}.png" for stem in stems]


def unknown(value: object) -> str:
    """A provenance value as text; None (the run does not say) as 'unknown'."""
    return "unknown" if value is None else str(value)


def training_text(source: dict) -> str:
    """'method opd · loss reverse_kl · lr 0.001 · 200 steps · 64 prompts per step · task arith'."""
    lr = source.get("lr")
    return " · ".join(
        [
            f"method {unknown(source.get('method'))}",
            f"loss {unknown(source.get('loss_kind'))}",
            f"lr {'unknown' if lr is None else fmt(lr)}",
            f"{unknown(source.get('train_steps'))} steps",
            f"{unknown(source.get('batch'))} prompts per step",
            f"task {unknown(source.get('task'))}",
        ]
    )


def _analysis_rows(source: dict, steps: list[object]) -> list[tuple[str, str]]:
    run = source.get("run")
    created = source.get("run_created")
    base = source.get("base")
    return [
        ("Run", unknown(run) + (f" (created {created})" if created else "")),
        ("Base model", unknown(base) + (f" ({source['base_source']})" if base else "")),
        ("Checkpoints", f"{len(steps)}: steps {', '.join(map(str, steps))}"),
        ("Training", training_text(source)),
    ]


def header_html(rows: list[tuple[str, str]], source: dict) -> str:
    """The provenance block: the given rows, then the tool, the date and the paper cited.

    rows: (field, plain text) pairs; source: a provenance dict (version and date of the analysis;
    without them, this rendering's).
    """
    made = source.get("foresight_version") or version("foresight")
    date = source.get("date") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [*rows, ("Made by", f"foresight {made}, {date}")]
    cells = "".join(
        f"<tr><th>{html.escape(field)}</th><td>{html.escape(text)}</td></tr>"
        for field, text in rows
    )
    paper = (
        f"<tr><th>Paper</th><td>Cai, Cao et al., <a href='{PAPER['url']}'>{PAPER['title']}</a>, "
        f"arXiv {PAPER['arxiv']} (2026)</td></tr>"
    )
    return f"<table class='meta'>{cells}{paper}</table>"


def _runs_table(report_dirs: dict[str, Path], out_dir: Path) -> str:
    """One row per run of `analyze --compare`: its folder, base and training settings."""
    rows = []
    for name, report_dir in report_dirs.items():
        source = load_provenance(report_dir)
        link = html.escape(Path(os.path.relpath(report_dir, out_dir), "report.html").as_posix())
        rows.append(
            f"<tr><td><a href='{link}'>{html.escape(name)}</a></td>"
            f"<td>{html.escape(unknown(source.get('run')))}</td>"
            f"<td>{html.escape(unknown(source.get('base')))}</td>"
            f"<td>{html.escape(training_text(source))}</td></tr>"
        )
    return (
        "<table class='data'><tr><th>run (its report)</th><th>run folder</th><th>base model</th>"
        "<th>training</th></tr>" + "".join(rows) + "</table>"
    )


def _summary(overall: list[dict[str, object]]) -> str:
    """The final checkpoint's overall row: readable names, 3 significant digits, units, notes."""
    if not overall:
        return ""
    final = overall[-1]
    rows = []
    for key, value in final.items():
        if not key.startswith("dynamics/") or not isinstance(value, float | int):
            continue
        note = (
            "1 by definition (the final update compared with itself)" if one_at_final(key) else ""
        )
        rows.append(
            f"<tr><td>{html.escape(label(key))}</td><td class='num'>{fmt(value)}</td>"
            f"<td>{html.escape(unit(key))}</td><td class='note'>{note}</td>"
            f"<td><code>{html.escape(key)}</code></td></tr>"
        )
    return (
        f"<h2>Final checkpoint (step {final['step']})</h2><p class='note'>Means over the attention "
        "and MLP matrices, except the whole-model update size and the shares, which cover every "
        "tensor; a metric undefined here (no tensor of that group, or a zero update) is left "
        "out. Numbers have 3 significant digits.</p><table class='data'><tr><th>metric</th>"
        "<th>value</th><th>unit</th><th>note</th><th>column in overall.csv</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _tables_note(report_dir: Path) -> str:
    names = [f"{name}.csv" for name in TABLES] + [f"probes/{name}.csv" for name in PROBE_TABLES]
    links = [f"<a href='{name}'>{name}</a>" for name in names if (report_dir / name).is_file()]
    return (
        "<p>Each figure below shows a property of the update ΔW = W_t − W_base, the change "
        f"training made to the weights. The numbers behind them: {', '.join(links)} (columns "
        "defined in docs/metrics.md of the foresight repository).</p>"
    )


def figure_html(fig_dir: Path, stem: str, explanation: tuple[str, str] | None = None) -> str:
    """A figure as a section: heading, explanation (EXPLANATIONS[stem] unless given) and the PNG
    embedded as a data URI."""
    heading, text = explanation or EXPLANATIONS[stem]
    data = base64.b64encode((fig_dir / f"{stem}.png").read_bytes()).decode()
    return (
        f"<section><h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>"
        f'<img alt="{stem}" src="data:image/png;base64,{data}"></section>'
    )


STYLE = (
    "body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
    "img{max-width:100%}section{margin-bottom:2em}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{padding:2px 10px;text-align:left;vertical-align:top}"
    ".data tr:nth-child(even){background:#f4f4f4}.num{text-align:right}"
    ".meta{background:#f6f8fa;border:1px solid #ddd}.meta th{color:#555;font-weight:normal}"
    ".note{color:#666;font-size:90%}code{font-size:85%;color:#555}"
)


def write_page(out_dir: Path, title: str, body: list[str]) -> None:
    """out_dir/report.html: the title, then the body's HTML fragments in order."""
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(body)
        + "</body></html>"
    )
    (out_dir / "report.html").write_text(page)
