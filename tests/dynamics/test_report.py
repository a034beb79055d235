"""report.html: re-rendered from the tables alone; its header, summary paragraph and metric names.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import html
import json
import re
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from foresight.dynamics.findings import findings
from foresight.dynamics.labels import LABELS, fmt, fmt_spread, label, percent, short_label, unit
from foresight.dynamics.provenance import provenance
from foresight.dynamics.report import EXPLANATIONS, load_tables, render

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


def test_header_names_the_run_its_settings_and_the_paper(report):
    out, summary = report
    page = (out / "report.html").read_text()
    base = summary["base"]
    run = str(Path(summary["checkpoints"][0]["path"]).parent.parent)
    assert f"<th>Run</th><td>{run}</td>" in page
    assert f"{base} (model.student in the run&#x27;s config)" in page
    assert "3: steps 10, 20, 40" in page
    # The series' config names the task only: every other setting is said to be unknown.
    assert "method unknown · loss unknown · lr unknown" in page and "task arith" in page
    assert f"foresight {version('foresight')}, " in page
    assert "<a href='https://arxiv.org/abs/2605.11739'>Learning to Foresee" in page
    assert json.loads((out / "provenance.json").read_text()) == summary["provenance"]


def test_provenance_reads_a_run_folder_and_says_what_it_lacks(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {
        "model": {"student": str(tmp_path / "base")},
        "train": {"method": "opd", "steps": 200},
        "optim": {"lr": 0.001},
        "loss": {"kind": "reverse_kl"},
        "rollout": {"prompts_per_step": 64},
        "task": {"name": "arith"},
        "effopd": {"enabled": True},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "foresight-run.json").write_text('{"kind": "run", "created": "2026-12-01T10:00:00Z"}')
    checkpoints = [(step, run / "checkpoints" / f"step-{step:06d}") for step in (20, 200)]
    source = provenance(tmp_path / "base", checkpoints)
    assert source["run"] == str(run) and source["run_created"] == "2026-12-01T10:00:00Z"
    assert source["base_source"] == "model.student in the run's config"
    assert (source["method"], source["loss_kind"], source["lr"]) == (
        "opd + EffOPD",
        "reverse_kl",
        0.001,
    )
    assert (source["train_steps"], source["batch"], source["task"]) == (200, 64, "arith")
    assert source["steps"] == [20, 200] and source["paper"]["arxiv"] == "2605.11739"
    step0 = provenance(run / "checkpoints" / "step-000000", checkpoints)["base_source"]
    assert step0 == "the run's own checkpoint step-000000"
    (run / "config.yaml").write_text("model: [unclosed")  # unreadable: unknown, not a crash
    assert provenance(tmp_path / "other", checkpoints)["method"] is None
    loose = provenance(tmp_path / "base", [(5, tmp_path / "final")])
    assert loose["run"] is None and loose["method"] is None
    assert loose["base_source"].startswith("given on the command line")


def test_summary_table_names_metrics_in_words_with_three_digits(report):
    out, _ = report
    page = (out / "report.html").read_text()
    table = page[page.index("<h2>Final checkpoint") :].split("</table>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td class='num'>(.*?)</td>.*?<code>(.*?)</code>", table)
    assert len(rows) > 20
    for name, value, key in rows:
        assert "dynamics/" not in name and name == html.escape(label(key))
        assert len(re.sub(r"^0\.0*|[.-]|e.*$", "", value)) <= 3, (key, value)
    names = {key: name for name, _, key in rows}
    assert names["dynamics/sparsity_abs_1e-06"] == "Share of update entries with |ΔW| &lt; 1e-6"
    for key in ("dynamics/alignment", "dynamics/overlap_top20", "dynamics/allocation_spearman"):
        row = table[table.index(f"<code>{key}</code>") - 400 : table.index(f"<code>{key}</code>")]
        assert "1 by definition" in row, key


def test_every_key_the_analysis_writes_has_a_readable_name(report):
    out, _ = report
    tables = load_tables(out)
    keys = {key for rows in tables.values() for row in rows for key in row}
    metric_keys = {key for key in keys if key.startswith("dynamics/")}
    assert len(metric_keys) > 25
    for key in metric_keys:
        assert label(key) and short_label(key) and unit(key)
    with pytest.raises(KeyError, match="labels.py"):
        label("dynamics/not_a_metric")


def test_numbers_have_three_significant_digits_and_spreads_two():
    assert fmt_spread(0.0589, 0.000546) == "0.0589 ± 0.00055"
    assert [fmt(v) for v in (0.0589, 58.93, 1234.5, 1e-6, 5.4649e-5, 0.99996, 0.5, 0)] == [
        "0.0589", "58.9", "1230", "1e-6", "5.46e-5", "1", "0.5", "0",
    ]  # fmt: skip
    assert fmt(None) == "n/a" and fmt_spread(0.2, None) == "0.2" and percent(0.1234) == "12.3%"


def test_docs_list_every_readable_name():
    docs = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    section = docs[docs.index("## Names in report.html") :].split("\n## ")[0]
    listed = {}
    for line in section.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`dynamics/"):
            listed[cells[0].strip("`")] = (cells[1], cells[2])
    assert listed == LABELS


def _tables(alignments, kind_shares):
    steps = [10 * (i + 1) for i in range(len(alignments))]
    overall = [
        {
            "step": step,
            "progress": step / steps[-1],
            "dynamics/frobenius_rel": 0.02 * step / steps[-1],
            "dynamics/energy_top1": 0.61,
            "dynamics/energy_top4": 0.9,
            "dynamics/top1pct_energy": 0.78,
            "dynamics/alignment": alignment,
            "dynamics/allocation_mlp": 0.7,
            "dynamics/allocation_attention": 0.25,
        }
        for step, alignment in zip(steps, alignments, strict=True)
    ]
    kinds = [
        {"step": steps[-1], "kind": kind, "dynamics/allocation": share}
        for kind, share in kind_shares.items()
    ]
    layers = [
        {"step": steps[-1], "layer": layer, "dynamics/allocation": share}
        for layer, share in enumerate((0.1, 0.5, 0.3))
    ]
    return {"overall": overall, "kinds": kinds, "layers": layers}


def test_the_summary_paragraph_says_what_the_numbers_say():
    text = findings(_tables([0.4, 0.93, 0.95, 1.0], {"up": 0.4, "q": 0.25, "down": 0.3}))
    assert "moved by 2% of its own size" in text
    assert "MLP up (40%), MLP down (30%) and attention query (25%)" in text
    assert "MLP tensors 70% and attention tensors 25%" in text
    assert "layer 1 (50%) and layer 2 (30%) took the most and layer 0 (10%) the least" in text
    assert "top 1 and 4 singular directions" in text and "hold 61% and 90%" in text
    assert "settled by step 20, 50% of the way through training" in text
    later = findings(_tables([0.4, 0.5, 0.88, 1.0], {"down": 0.6, "q": 0.4}))
    assert "had not settled before the final checkpoint" in later and "highest is 0.88" in later
    assert "MLP down (60%) and attention query (40%)" in later
    lone = findings(_tables([1.0], {"q": 1.0}))
    assert "one checkpoint, step 10" in lone and "With a single checkpoint" in lone
