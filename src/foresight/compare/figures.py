"""The comparison's figures: methods side by side, seeds as a band (min to max) around the mean.

Every function reads report folders written by `foresight analyze` and run folders' metrics.jsonl,
never a checkpoint, and returns the stem of the PNG it wrote.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from foresight.dynamics.labels import kind_name, short_label
from foresight.dynamics.report import Tables
from foresight.log import read_metrics
from foresight.module_names import KINDS

COLORS = {"opd": "tab:blue", "rl": "tab:red", "sft": "tab:green"}
RunTables = dict[str, list[Tables]]  # method -> one analysis folder's tables per seed


def _band(ax, xs_per_seed, ys_per_seed, method: str, label: str | None = None, **kw) -> None:
    """Mean line with a min-max band over seeds at the x values every seed has.

    xs_per_seed, ys_per_seed: one list of x (and y) values per seed.
    """
    points: dict[float, list[float]] = defaultdict(list)
    for xs, ys in zip(xs_per_seed, ys_per_seed):
        for x, y in zip(xs, ys):
            if y is not None:
                points[x].append(float(y))
    xs = sorted(x for x, v in points.items() if len(v) == len(ys_per_seed))
    if not xs:
        return
    mean = [statistics.fmean(points[x]) for x in xs]
    kw = {"ls": "-", **kw}
    ax.plot(xs, mean, marker="o", ms=2.5, color=COLORS.get(method), label=label or method, **kw)
    if len(ys_per_seed) > 1:
        low, high = [min(points[x]) for x in xs], [max(points[x]) for x in xs]
        ax.fill_between(xs, low, high, color=COLORS.get(method), alpha=0.15, lw=0)


def _series(rows: list[dict], x: str, y: str, **match) -> tuple[list[float], list[float]]:
    kept = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return [r[x] for r in kept], [r[y] for r in kept]


def _legend(ax, outside: bool = False) -> None:
    """A legend, to the right of the axes when `outside` (many entries would hide the lines)."""
    if not ax.get_legend_handles_labels()[0]:  # a probe missing from every run: an empty plot
        return
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7)


def _save(fig: Figure, fig_dir: Path, stem: str) -> str:
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / f"{stem}.png", dpi=110)
    return stem


def alignment_figure(runs: RunTables, fig_dir: Path) -> str:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for method, seeds in runs.items():
        overlap = sorted(k for k in seeds[0]["overall"][0] if k.startswith("dynamics/overlap_top"))
        key = max(overlap, key=lambda k: int(k.removeprefix("dynamics/overlap_top")), default=None)
        panels = [(left, "dynamics/alignment")] + ([(right, key)] if key else [])  # overlap_k: []
        for ax, metric in panels:
            pairs = [_series(t["overall"], "progress", metric) for t in seeds]
            _band(ax, [p[0] for p in pairs], [p[1] for p in pairs], method)
            ax.set_title(short_label(metric).removesuffix(" with final").removesuffix(" (top 20)"))
    for ax in (left, right):
        ax.axvline(0.3, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("training progress (step / final step)")
        _legend(ax)
    return _save(fig, fig_dir, "alignment")


def allocation_figure(runs: RunTables, fig_dir: Path) -> str:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    present = {r["kind"] for seeds in runs.values() for r in seeds[0]["kinds"]}
    kinds = [kind for kind in KINDS if kind in present]  # attention kinds together, then MLP
    width = 0.8 / max(1, len(runs))
    for index, (method, seeds) in enumerate(runs.items()):
        finals = [_final(t["layers"]) for t in seeds]
        pairs = [_series(rows, "layer", "dynamics/allocation") for rows in finals]
        _band(left, [p[0] for p in pairs], [p[1] for p in pairs], method)
        shares = []
        for kind in kinds:
            values = [
                r["dynamics/allocation"] or 0.0
                for t in seeds
                for r in _final(t["kinds"])
                if r["kind"] == kind
            ]
            shares.append(statistics.fmean(values) if values else 0.0)
        right.barh(
            [k + index * width for k in range(len(kinds))],
            shares,
            width,
            color=COLORS.get(method),
            label=method,
        )
    left.set(title="share of the squared update per layer (final)", xlabel="layer")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Horizontal bars: the readable kind names stack down the axis and never run into each other.
    right.set_yticks([k + 0.4 - width / 2 for k in range(len(kinds))], map(kind_name, kinds))
    right.tick_params(axis="y", labelsize=8)
    right.invert_yaxis()
    right.set(title="share of the squared update per module kind (final)", xlabel="share")
    for ax in (left, right):
        _legend(ax)
    return _save(fig, fig_dir, "allocation")


def _final(rows: list[dict]) -> list[dict]:
    if not rows:
        return []
    last = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == last]


def window_figure(runs: RunTables, fig_dir: Path) -> str:
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for method, seeds in runs.items():
        for part, style in (("mlp", "-"), ("attention", "--")):
            pairs = [_series(t.get("probe_window", []), "centre", "probe/gain_recovered", part=part)
                     for t in seeds]  # fmt: skip
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            _band(ax, xs, ys, method, label=f"{method} {part}", ls=style)
    ax.set(xlabel="window centre layer", ylabel="share of final gain recovered")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Update of a layer window only:\nMLP (solid) or attention (dashed)", fontsize=10)
    _legend(ax, outside=True)
    return _save(fig, fig_dir, "window")


def scaling_figure(runs: RunTables, fig_dir: Path) -> str:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for method, seeds in runs.items():
        for number, tables in enumerate(seeds):
            rows = tables.get("probe_scaling", [])
            xs, ys = _series(rows, "probe/update_norm", "score/accuracy")
            left.plot(xs, ys, "-o", ms=2.5, color=COLORS.get(method),
                      label=method if number == 0 else None)  # fmt: skip
        rows = [t.get("probe_rescaling", []) for t in seeds]
        pairs = [_series(r, "progress", "probe/gain_recovered", beta=1.0) for r in rows]
        _band(right, [p[0] for p in pairs], [p[1] for p in pairs], method)
    left.set(xlabel="‖α ΔW_T‖_F", ylabel="test accuracy", title="norm-matched scaling")
    right.set(xlabel="progress of the checkpoint", ylabel="share of final gain recovered")
    right.set_title("checkpoint's update rescaled to the final norm")
    for ax in (left, right):
        _legend(ax)
    return _save(fig, fig_dir, "scaling")


def accuracy_figure(run_dirs: dict[str, list[Path]], fig_dir: Path) -> str:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for method, dirs in run_dirs.items():
        steps, seconds, accuracy = [], [], []
        for run_dir in dirs:
            rows, elapsed = read_metrics(run_dir), 0.0
            s, w, a = [], [], []
            for row in rows:
                elapsed += row.get("time/step_s", 0.0)
                if "eval/accuracy" in row:
                    s.append(row["step"])
                    w.append(elapsed)
                    a.append(row["eval/accuracy"])
            steps.append(s), seconds.append(w), accuracy.append(a)
        _band(left, steps, accuracy, method)
        mean_seconds = [statistics.fmean(col) for col in zip(*seconds)]
        _band(right, [mean_seconds] * len(dirs), accuracy, method)
    left.set(xlabel="optimizer step", ylabel="held-out accuracy (greedy)")
    right.set(xlabel="training seconds (mean over seeds; evaluation excluded)")
    for ax in (left, right):
        _legend(ax)
    return _save(fig, fig_dir, "accuracy")
