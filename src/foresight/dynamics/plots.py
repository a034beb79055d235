"""PNG figures drawn from the report's tables alone, so a report re-renders without any SVD.

Figures are built on `matplotlib.figure.Figure` directly rather than through pyplot: no global
figure state and no backend switch at import; `savefig` to .png renders with Agg. Every function
takes table rows (as `tables.read_csv` returns them) and returns the stems of the files it wrote.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from foresight.dynamics.labels import kind_name, short_label

Row = dict[str, object]
Tables = dict[str, list[Row]]

# One key each: left panel against progress (overall and per kind), right panel per layer.
SINGLE_METRICS = (
    "dynamics/frobenius_rel",
    "dynamics/spectral_norm",
    "dynamics/spectral_ratio",
    "dynamics/effective_rank",
    "dynamics/top1pct_energy",
    "dynamics/alignment",
)
# Families of keys sharing a prefix: one line per key against progress.
FAMILY_METRICS = {
    "energy": ("dynamics/energy_top", "share of ‖ΔW‖_F² in the top-k directions"),
    "sparsity_abs": ("dynamics/sparsity_abs_", "share of entries with |ΔW| < t"),
    "sparsity_rel": ("dynamics/sparsity_rel_", "share of entries with |ΔW| < c × RMS(W_base)"),
    "overlap": ("dynamics/overlap_top", "top-k subspace overlap with final"),
}
# The whole trajectory's straightness (straightness.py), one value per checkpoint.
STRAIGHTNESS = ("dynamics/segment_cosine", "dynamics/early_direction_share")
# Embedding-swap variants (probes.py) as the bar labels say them.
VARIANT_NAMES = {
    "final_base_embedding": "final with\nbase embeddings",
    "final_base_lm_head": "final with\nbase output head",
}
COMPARE_METRICS = [
    "dynamics/frobenius_rel",
    "dynamics/spectral_ratio",
    "dynamics/effective_rank",
    "dynamics/top1pct_energy",
    "dynamics/alignment",
    "dynamics/allocation_spearman",
    "dynamics/allocation_mlp",
    "dynamics/allocation_attention",
]


def make_figures(tables: Tables, fig_dir: Path) -> list[str]:
    """Every figure the tables support, as fig_dir/<stem>.png; returns the stems in report order."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    stems = []
    overall, kinds, layers = tables["overall"], tables["kinds"], tables["layers"]
    for key in SINGLE_METRICS:
        if _column(overall, key):
            stems.append(_single_metric(overall, kinds, layers, key, short_label(key), fig_dir))
    for name, (prefix, label) in FAMILY_METRICS.items():
        keys = [key for key in overall[0] if key.startswith(prefix)] if overall else []
        if any(_column(overall, key) for key in keys):
            stems.append(_family_metric(overall, layers, name, keys, label, fig_dir))
    # The final checkpoint's early share is 1 by definition: drawn alone it would say nothing.
    if any(_column(overall[:-1], key) for key in STRAIGHTNESS):
        stems.append(_straightness_figure(overall, fig_dir))
    stems += _allocation_figures(overall, kinds, layers, fig_dir)
    if _column(tables.get("trajectory", []), "dynamics/pca_pc1"):
        stems.append(_trajectory_figure(tables["trajectory"], fig_dir))
    for name, draw in PROBE_FIGURES.items():
        if tables.get(f"probe_{name}"):
            stems.append(draw(tables, fig_dir))
    return stems


def _column(rows: list[Row], key: str) -> list[object]:
    return [row[key] for row in rows if row.get(key) is not None]


def _xy(rows: list[Row], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(row[x], row[y]) for row in rows if row.get(y) is not None]
    return [float(a) for a, _ in pairs], [float(b) for _, b in pairs]


def _legend_outside(ax) -> None:
    """The legend to the right of the axes, where it cannot hide a line or a bar."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _save(fig: Figure, fig_dir: Path, stem: str) -> str:
    fig.savefig(fig_dir / f"{stem}.png", dpi=90)
    return stem


def _per_layer(ax, layers: list[Row], key: str) -> None:
    """One line per checkpoint across layers, coloured by training progress."""
    cmap = matplotlib.colormaps["viridis"]
    for step in sorted({row["step"] for row in layers}):
        rows = [row for row in layers if row["step"] == step]
        x, y = _xy(rows, "layer", key)
        if x:
            ax.plot(x, y, color=cmap(float(rows[0]["progress"])), lw=1.2)
    ax.figure.colorbar(
        ScalarMappable(Normalize(0, 1), cmap), ax=ax, label="training progress", pad=0.01
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_title("per layer")


def _single_metric(
    overall: list[Row], kinds: list[Row], layers: list[Row], key: str, label: str, fig_dir: Path
) -> str:
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(*_xy(overall, "progress", key), "k-o", lw=2.2, ms=3, label="mean (attn+MLP)")
    for kind in dict.fromkeys(row["kind"] for row in kinds):
        x, y = _xy([row for row in kinds if row["kind"] == kind], "progress", key)
        if x:
            left.plot(x, y, lw=1, label=kind_name(str(kind)))
    left.set_xlabel("training progress (step / final step)")
    left.set_ylabel(label)
    _legend_outside(left)
    left.set_title("against progress")
    _per_layer(right, layers, key)
    right.set_ylabel(label)
    return _save(fig, fig_dir, "metric_" + key.removeprefix("dynamics/"))


def _family_metric(
    overall: list[Row], layers: list[Row], name: str, keys: list[str], label: str, fig_dir: Path
) -> str:
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for key in keys:
        left.plot(*_xy(overall, "progress", key), "-o", ms=3, label=short_label(key))
    left.set_xlabel("training progress (step / final step)")
    left.set_ylabel(label)
    left.legend(fontsize=7)
    left.set_title("mean over attention and MLP matrices")
    _per_layer(right, layers, keys[-1])
    right.set_title(f"per layer: {short_label(keys[-1])}")
    return _save(fig, fig_dir, f"family_{name}")


def _straightness_figure(overall: list[Row], fig_dir: Path) -> str:
    """Both straightness measures against progress on one axis: each is a cosine, 1 = straight."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(0.0, color="grey", lw=0.8)
    for key, style in zip(STRAIGHTNESS, ("-o", "-s"), strict=True):
        x, y = _xy(overall, "progress", key)
        if x:
            ax.plot(x, y, style, ms=4, label=short_label(key))
    ax.set_xlabel("training progress (step / final step)")
    ax.set_ylabel("cosine (attention + MLP matrices as one vector)", fontsize=8)
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
    _legend_outside(ax)
    return _save(fig, fig_dir, "straightness")


def _allocation_figures(
    overall: list[Row], kinds: list[Row], layers: list[Row], fig_dir: Path
) -> list[str]:
    stems = []
    kind_names = list(dict.fromkeys(row["kind"] for row in kinds))
    steps = [row["step"] for row in overall if row.get("dynamics/update_norm")]
    if steps:
        fig = Figure(figsize=(6, 3.6), layout="constrained")
        ax = fig.subplots()
        progress = [row["progress"] for row in overall if row["step"] in steps]
        stacks = [
            [_lookup(kinds, step, "kind", kind, "dynamics/allocation") for step in steps]
            for kind in kind_names
        ]
        ax.stackplot(progress, stacks, labels=[kind_name(str(kind)) for kind in kind_names])
        ax.set_xlabel("training progress")
        ax.set_ylabel("share of squared update")
        _legend_outside(ax)
        stems.append(_save(fig, fig_dir, "allocation_kinds"))
    if _column(layers, "dynamics/allocation"):
        fig = Figure(figsize=(10, 3.6), layout="constrained")
        left, right = fig.subplots(1, 2)
        _per_layer(left, layers, "dynamics/allocation")
        left.set_ylabel("layer's share of squared update")
        final = [row for row in layers if row["step"] == layers[-1]["step"]]
        for key, offset, name in (
            ("dynamics/allocation_attention", -0.2, "attention"),
            ("dynamics/allocation_mlp", 0.2, "MLP"),
        ):
            x, y = _xy(final, "layer", key)
            right.bar([v + offset for v in x], y, width=0.4, label=name)
        right.set_xlabel("layer")
        right.set_ylabel("share of squared update")
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_title("final checkpoint: attention vs MLP")
        _legend_outside(right)
        stems.append(_save(fig, fig_dir, "allocation_layers"))
    if _column(overall, "dynamics/allocation_spearman"):
        fig = Figure(figsize=(6, 3.6), layout="constrained")
        ax = fig.subplots()
        ax.plot(*_xy(overall, "progress", "dynamics/allocation_spearman"), "k-o", ms=3)
        ax.set_xlabel("training progress")
        ax.set_ylabel("Spearman vs final allocation")
        stems.append(_save(fig, fig_dir, "allocation_spearman"))
    return stems


def _lookup(rows: list[Row], step: object, field: str, value: object, key: str) -> float:
    for row in rows:
        if row["step"] == step and row[field] == value:
            return float(row[key] or 0.0)
    return 0.0


def _trajectory_figure(trajectory: list[Row], fig_dir: Path) -> str:
    kinds = list(dict.fromkeys(row["kind"] for row in trajectory if row["dynamics/pca_pc1"]))
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for key, offset in (("dynamics/pca_pc1", -0.2), ("dynamics/pca_pc12", 0.2)):
        means = []
        for kind in kinds:
            values = _column([row for row in trajectory if row["kind"] == kind], key)
            means.append(sum(map(float, values)) / len(values))
        # short_label, not key[-4:]: matplotlib hides legend labels that start with "_" ("_pc1").
        ax.barh([i + offset for i in range(len(kinds))], means, height=0.4, label=short_label(key))
    # Horizontal bars: the kind names stack down the axis and never run into each other.
    ax.set_yticks(range(len(kinds)), [kind_name(str(kind)) for kind in kinds], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of the top direction's trajectory variance")
    ax.set_xlim(0, 1.05)
    _legend_outside(ax)
    return _save(fig, fig_dir, "trajectory_pca")


def _reference_lines(ax, tables: Tables) -> None:
    """Dashed base and dotted final accuracy, the two ends every probe sits between."""
    for row in tables.get("probe_reference", []):
        value = row.get("score/accuracy")
        if value is not None:
            style = "--" if row["variant"] == "base" else ":"
            ax.axhline(float(value), color="grey", ls=style, lw=1, label=str(row["variant"]))


def _probe_scaling(tables: Tables, fig_dir: Path) -> str:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(*_xy(tables["probe_scaling"], "probe/update_norm", "score/accuracy"), "k-o", ms=4)
    _reference_lines(ax, tables)
    ax.set_xlabel("‖α ΔW_T‖_F (update norm)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    return _save(fig, fig_dir, "probe_scaling")


def _probe_embedding_swap(tables: Tables, fig_dir: Path) -> str:
    rows = tables.get("probe_reference", []) + tables["probe_embedding_swap"]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    names = [VARIANT_NAMES.get(str(row["variant"]), str(row["variant"])) for row in rows]
    ax.bar(names, [float(row["score/accuracy"]) for row in rows])
    ax.set_ylabel("accuracy")
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, fig_dir, "probe_embedding_swap")


def _probe_window(tables: Tables, fig_dir: Path) -> str:
    rows = tables["probe_window"]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax = fig.subplots()
    norms = ax.twinx()
    for part, colour in (("mlp", "tab:blue"), ("attention", "tab:orange")):
        part_rows = [row for row in rows if row["part"] == part]
        ax.plot(*_xy(part_rows, "centre", "score/accuracy"), "-o", color=colour, ms=3, label=part)
        x, y = _xy(part_rows, "centre", "probe/layer_update_norm")
        offset = -0.2 if part == "mlp" else 0.2
        norms.bar([v + offset for v in x], y, width=0.4, color=colour, alpha=0.25)
    _reference_lines(ax, tables)
    ax.set_xlabel("window centre layer l")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (lines)")
    norms.set_ylabel("layer update norm (bars)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0), borderaxespad=0)
    return _save(fig, fig_dir, "probe_window")


def _probe_truncation(tables: Tables, fig_dir: Path) -> str:
    rows = tables["probe_truncation"]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for side in ("top", "bottom"):
        x, y = _xy([row for row in rows if row["side"] == side], "pct", "score/accuracy")
        ax.plot(x, y, "-o", ms=4, label=f"{side}-k% components")
    _reference_lines(ax, tables)
    ax.set_xscale("log")
    ax.set_xlabel("percent of the rank kept (norm-matched)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    return _save(fig, fig_dir, "probe_truncation")


def _probe_rescaling(tables: Tables, fig_dir: Path) -> str:
    rows = tables["probe_rescaling"]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for beta in dict.fromkeys(row["beta"] for row in rows):
        x, y = _xy([row for row in rows if row["beta"] == beta], "progress", "probe/gain_recovered")
        ax.plot(x, y, "-o", ms=3, label=f"β = {beta:g}")
    ax.set_xlabel("training progress of the checkpoint")
    ax.set_ylabel("share of final gain recovered")
    ax.legend(fontsize=7)
    return _save(fig, fig_dir, "probe_rescaling")


PROBE_FIGURES = {
    "scaling": _probe_scaling,
    "embedding_swap": _probe_embedding_swap,
    "window": _probe_window,
    "truncation": _probe_truncation,
    "rescaling": _probe_rescaling,
}


def compare_figures(runs: dict[str, Tables], fig_dir: Path) -> list[str]:
    """Several runs on the same axes: overall metrics against progress, and per-layer allocation."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    keys = [
        key for key in COMPARE_METRICS if any(_column(t["overall"], key) for t in runs.values())
    ]
    fig = Figure(figsize=(12, 2.8 * ((len(keys) + 3) // 4)), layout="constrained")
    axes = fig.subplots((len(keys) + 3) // 4, 4, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        for label, tables in runs.items():
            ax.plot(*_xy(tables["overall"], "progress", key), "-o", ms=2.5, label=label)
        ax.set_title(short_label(key), fontsize=9)
        ax.set_xlabel("training progress", fontsize=8)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    stems = [_save(fig, fig_dir, "compare_overall")]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for label, tables in runs.items():
        final_step = tables["layers"][-1]["step"] if tables["layers"] else None
        final = [row for row in tables["layers"] if row["step"] == final_step]
        left.plot(*_xy(final, "layer", "dynamics/allocation"), "-o", ms=3, label=label)
        right.plot(*_xy(final, "layer", "dynamics/allocation_mlp"), "-o", ms=3, label=label)
    left.set_title("layer's share of squared update (final)")
    right.set_title("layer's MLP share of squared update (final)")
    for ax in (left, right):
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    stems.append(_save(fig, fig_dir, "compare_layers"))
    return stems
