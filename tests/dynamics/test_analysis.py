"""End to end: a save_pretrained series (two shards each) through analyze, probes and the report.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from foresight.dynamics import analyze, checkpoints_of, compare
from foresight.dynamics.tables import read_csv, write_csv
from foresight.errors import UserError

from .series import PROBE_CFG as CFG
from .series import assert_valid_png, images_of


def test_series_is_sharded_like_a_real_checkpoint(llama_series):
    base, checkpoints = llama_series
    for folder in [base, *(path for _, path in checkpoints)]:
        assert len(list(folder.glob("*.safetensors"))) == 2
        assert (folder / "model.safetensors.index.json").is_file()
    assert checkpoints_of(checkpoints[0][1].parent.parent) == checkpoints


def test_report_folder_and_metrics_json(report, llama_series):
    out, summary = report
    for name in ("modules", "overall", "kinds", "layers", "trajectory"):
        assert (out / f"{name}.csv").is_file()
    for name in ("reference", "scaling", "embedding_swap", "window", "truncation", "rescaling"):
        assert (out / "probes" / f"{name}.csv").is_file()

    def no_nan(constant):
        raise AssertionError(f"{constant} in metrics.json")

    loaded = json.loads((out / "metrics.json").read_text(), parse_constant=no_nan)
    assert loaded["schema_version"] == 1
    assert [c["step"] for c in loaded["checkpoints"]] == [10, 20, 40]
    assert loaded["overall"][-1]["dynamics/alignment"] == pytest.approx(1.0)
    assert loaded["overall"][-1]["dynamics/allocation_spearman"] == pytest.approx(1.0)
    # Planted rank-2 updates: the top 4 directions hold nearly all the energy at the end.
    assert loaded["overall"][-1]["dynamics/energy_top4"] > 0.9
    assert loaded["probes"]["reference"][1]["score/accuracy"] == pytest.approx(1.0, abs=1e-5)
    lines = (out / "modules.csv").read_text().splitlines()
    n_tensors = 1 + 3 * 9 + 1  # embedding, 3 layers x 9 tensors, final norm (lm_head tied)
    assert len(lines) == 1 + 3 * n_tensors
    assert all(math.isfinite(v) for v in summary["timings"].values())


def test_every_report_image_is_a_valid_png(report):
    out, summary = report
    images = images_of(out / "report.html")
    assert len(images) == len(summary["figures"]) >= 15
    for data in images:
        assert_valid_png(data)
    for figure in summary["figures"]:
        assert_valid_png((out / figure).read_bytes())


def test_compare_two_runs(report, tmp_path):
    out, _ = report
    # compare reads only the tables, so a second run can be the first one's tables with a
    # doubled update norm.
    other = tmp_path / "other_report"
    other.mkdir()
    for csv in out.glob("*.csv"):
        shutil.copy(csv, other / csv.name)
    rows = read_csv(other / "overall.csv")
    for row in rows:
        row["dynamics/frobenius_rel"] *= 2
    write_csv(other / "overall.csv", rows)
    summary = compare({"a": out, "b": other}, tmp_path / "compare")
    assert summary["figures"] == ["figures/compare_overall.png", "figures/compare_layers.png"]
    assert json.loads((tmp_path / "compare" / "compare.json").read_text())["runs"]["b"] == str(
        other
    )
    for data in images_of(tmp_path / "compare" / "report.html"):
        assert_valid_png(data)
    with pytest.raises(UserError, match="no overall.csv"):
        compare({"a": tmp_path}, tmp_path / "nothing")


def test_bad_checkpoint_lists(llama_series, tmp_path):
    base, checkpoints = llama_series
    with pytest.raises(UserError, match="No checkpoints"):
        analyze(base, [], tmp_path, CFG)
    with pytest.raises(UserError, match="repeat"):
        analyze(base, [checkpoints[0], checkpoints[0]], tmp_path, CFG)
    with pytest.raises(UserError, match="must be positive"):
        analyze(base, [(0, checkpoints[0][1])], tmp_path, CFG)


def test_an_interrupted_metrics_json_write_leaves_no_metrics_json(
    llama_series, tmp_path, monkeypatch
):
    # metrics.json marks a finished analysis (compare reuses the folder): a kill while it is being
    # written must not leave a half file under that name.
    from pathlib import Path

    base, checkpoints = llama_series
    real_write = Path.write_text

    def killed_midway(self, text, *args, **kwargs):
        if self.name.startswith("metrics.json"):
            real_write(self, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        analyze(base, checkpoints[:2], tmp_path / "out", CFG.model_copy(update={"probes": []}))
    assert (tmp_path / "out" / "modules.csv").is_file()
    assert not (tmp_path / "out" / "metrics.json").exists()
