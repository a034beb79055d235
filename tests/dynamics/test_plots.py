"""Figures from edge-case tables (a lone checkpoint, a zero-update step, no probes), and legibility.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import shutil

from figure_checks import capture, legend_labels, problems

from foresight.config_sections import DynamicsConfig
from foresight.dynamics import analyze

from .series import assert_valid_png


def test_lone_final_checkpoint_and_a_zero_update_step(llama_series, tmp_path):
    base, checkpoints = llama_series
    stale = tmp_path / "lone" / "probes" / "scaling.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("alpha,score/accuracy\n0.5,0.9\n")  # left by an earlier run with probes
    lone = analyze(base, checkpoints[-1:], tmp_path / "lone", DynamicsConfig())
    # One checkpoint: no trajectory to run PCA on, so no trajectory figure.
    assert "figures/trajectory_pca.png" not in lone["figures"]
    assert not stale.exists() and "figures/probe_scaling.png" not in lone["figures"]
    # The base folder copied as step 0: every update is zero there.
    shutil.copytree(base, tmp_path / "step-000000")
    series = [(0, tmp_path / "step-000000"), *checkpoints]
    summary = analyze(base, series, tmp_path / "zero", DynamicsConfig())
    first = summary["overall"][0]
    assert first["dynamics/update_norm"] == 0.0 and first["dynamics/alignment"] is None
    for figure in summary["figures"]:
        assert_valid_png((tmp_path / "zero" / figure).read_bytes())


def test_figures_follow_the_columns_present(tmp_path):
    from foresight.dynamics.plots import make_figures

    overall = [
        {"step": 1, "progress": 0.5, "dynamics/frobenius_rel": 0.1},
        {"step": 2, "progress": 1.0, "dynamics/frobenius_rel": 0.2},
    ]
    tables = {"overall": overall, "kinds": [], "layers": [], "trajectory": []}
    assert make_figures(tables, tmp_path) == ["metric_frobenius_rel"]
    assert_valid_png((tmp_path / "metric_frobenius_rel.png").read_bytes())


def test_every_figure_reads_cleanly(report, tmp_path, monkeypatch):
    from foresight.dynamics import plots
    from foresight.dynamics.report import load_tables

    out, summary = report
    figures = capture(monkeypatch, plots, write=False)
    plots.make_figures(load_tables(out), tmp_path)
    assert [f"figures/{stem}.png" for stem in figures] == summary["figures"]
    for stem, fig in figures.items():
        assert problems(fig) == [], stem
    # Both bars are in the legend: a label starting with "_" ("_pc1") would be hidden.
    assert legend_labels(figures["trajectory_pca"]) == ["PC1", "PC1 + PC2"]
    assert legend_labels(figures["family_sparsity_abs"])[0] == "|ΔW| < 1e-6"


def test_the_legibility_check_sees_what_reads_badly():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [1, 2, 3], label="dynamics/alignment")
    ax.set_xlabel("layer")
    ax.set_xticks([0, 0.5, 1, 1.5, 2], ["embedding", "attention query", "MLP up", "MLP down", "x"])
    ax.set_title("a title far too long to fit into a figure three inches wide, by a lot")
    ax.legend()
    found = " / ".join(problems(fig))
    for text in ("legend entry", "half-layer ticks", "runs off the figure", "overlap"):
        assert text in found
