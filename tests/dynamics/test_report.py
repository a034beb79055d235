"""report.html from the tables alone: re-rendered in a folder holding nothing but the CSVs.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import re
import shutil

from foresight.dynamics.report import EXPLANATIONS, render

from .series import assert_valid_png, images_of


def test_render_needs_only_the_tables(report, tmp_path):
    out, summary = report
    for csv in out.glob("*.csv"):
        shutil.copy(csv, tmp_path / csv.name)
    (tmp_path / "probes").mkdir()
    for csv in (out / "probes").glob("*.csv"):
        shutil.copy(csv, tmp_path / "probes" / csv.name)
    figures = render(tmp_path)
    assert figures == summary["figures"]
    html = (tmp_path / "report.html").read_text()
    images = images_of(tmp_path / "report.html")
    assert len(images) == len(figures)
    for data in images:
        assert_valid_png(data)
    assert "Final checkpoint (step 40)" in html
    stems = {figure.removeprefix("figures/").removesuffix(".png") for figure in figures}
    assert stems <= set(EXPLANATIONS)
    assert {"probe_window", "allocation_spearman", "metric_alignment", "family_overlap"} <= stems


def test_every_explanation_is_two_sentences():
    for stem, (title, text) in EXPLANATIONS.items():
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip())
        assert len(sentences) == 2 and text.endswith("."), stem
        assert title
