"""`foresight compare` with learning-rate regimes, its training and analysis stubbed out: each
regime's claims and report in its own folder, and at OUT the claims table with a column per regime
(JSON, markdown and an index page whose links all resolve). Without regimes, the layout of before.

Run: .venv/bin/python -m pytest tests/compare/test_report.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from foresight.compare import run
from foresight.compare.claims import CLAIMS

YAML = """
model: {{student: models/arith/base, teacher: models/arith/teacher}}
task: {{name: arith}}
rollout: {{prompts_per_step: 8}}
compare:
  out_dir: {out}
  seeds: [0, 1, 2]
  steps: 100
  methods:
    opd: {{lr: 1.0e-3}}
    rl: {{lr: 1.0e-4, set: [rollout.group_size=4]}}
{scales}"""

# Every measure of a run: opd above rl at the tuned rates, below at the low one.
VALUES = {
    ("lr-x1", "opd"): [0.9, 0.92, 0.91],
    ("lr-x1", "rl"): [0.5, 0.52, 0.49],
    ("lr-x0.1", "opd"): [0.5, 0.52, 0.49],
    ("lr-x0.1", "rl"): [0.9, 0.92, 0.91],
}
TOP1 = next(claim.text for claim in CLAIMS if claim.measure == "top1pct_energy")


def _stub_stages(monkeypatch) -> list[str]:
    """No training or analysis; every run's measures from VALUES; each regime's report a stub.
    Returns the folders write_report was given."""
    keys = {claim.measure for claim in CLAIMS}

    def measures(analysis):  # analysis: OUT[/lr-x<scale>]/analysis/<method>-s<seed>
        method, seed = analysis.name.split("-s")
        regime = analysis.parent.parent.name if analysis.parent.parent.name != "cmp" else "lr-x1"
        return dict.fromkeys(keys, VALUES[regime, method][int(seed)])

    reports = []

    def report(out, runs, measures, claims):
        reports.append(out)
        (out / "report.html").write_text(f"<p>{len(runs)} runs</p>")

    def train(planned, console):  # a run folder, as training leaves one
        Path(planned.cfg.train.out_dir).mkdir(parents=True)

    monkeypatch.setattr(run, "_train", train)
    monkeypatch.setattr(run, "_analyze", lambda *args: None)
    monkeypatch.setattr(run, "run_measures", measures)
    monkeypatch.setattr(run, "write_report", report)
    return reports


def test_two_regimes_give_a_claims_column_each_and_an_index_whose_links_resolve(
    monkeypatch, tmp_path
):
    reports = _stub_stages(monkeypatch)
    out = tmp_path / "cmp"
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=out, scales="  lr_scales: [1, 0.1]\n"))
    console = Console(record=True, width=200)
    assert run.compare(path, console=console) == out
    assert reports == [out / "lr-x1", out / "lr-x0.1"]

    # Each regime is an ordinary comparison: its own claims.json, judged on its own runs.
    for regime, verdict in (("lr-x1", "holds"), ("lr-x0.1", "does not hold")):
        claims = {r["measure"]: r for r in json.loads((out / regime / "claims.json").read_text())}
        assert claims["top1pct_energy"]["verdict"] == verdict
        assert claims["top1pct_energy"]["opd"]["n"] == 3

    table = json.loads((out / "claims_by_regime.json").read_text())
    assert table["reports"] == {"lr-x1": "lr-x1/report.html", "lr-x0.1": "lr-x0.1/report.html"}
    assert len(table["claims"]) == len(CLAIMS)
    top1 = next(row for row in table["claims"] if row["measure"] == "top1pct_energy")
    assert top1["claim"] == TOP1 and list(top1["regimes"]) == ["lr-x1", "lr-x0.1"]
    tuned, low = top1["regimes"]["lr-x1"], top1["regimes"]["lr-x0.1"]
    assert (tuned["lr_scale"], tuned["verdict"], low["verdict"]) == (1.0, "holds", "does not hold")
    assert tuned["d"] == -low["d"] > 0.4 and tuned["half_width"] == low["half_width"] > 0
    assert tuned["methods"]["opd"]["values"] == VALUES["lr-x1", "opd"]

    # Markdown: claim | lr ×1 | lr ×0.1, each cell the verdict and d ± half-width.
    markdown = (out / "claims_by_regime.md").read_text().splitlines()
    assert "| claim | lr ×1 | lr ×0.1 |" in markdown
    row = next(line for line in markdown if line.startswith(f"| {TOP1} |"))
    assert row == f"| {TOP1} | holds, +0.407 ± 0.034 | does not hold, -0.407 ± 0.034 |"
    assert len([line for line in markdown if line.startswith("| ")]) == 1 + len(CLAIMS)

    page = (out / "report.html").read_text()
    assert "<th>Learning rates</th><td>×1, ×0.1 of each method&#x27;s tuned rate" in page
    assert "<th>Runs</th><td>12 (6 per regime): seeds 0, 1, 2, each 100 optimizer steps" in page
    assert re.search(
        r"opd: loss \w+, lr 0.001, 0.0001; rl: loss grpo, lr 0.0001, 1e-5, group", page
    )
    assert "<td><b>holds</b><br>+0.407 ± 0.034</td><td><b>does not hold</b><br>-0.407" in page
    links = re.findall(r"href=['\"]([^'\"]+)['\"]", page)
    local = [link for link in links if not link.startswith("https://")]
    assert {"lr-x1/report.html", "lr-x0.1/report.html", "claims_by_regime.md"} <= set(local)
    assert [link for link in local if link.startswith("/") or not (out / link).is_file()] == []

    text = console.export_text()
    assert f"  lr ×1            holds: {TOP1}" in text
    assert f"  lr ×0.1  does not hold: {TOP1}" in text

    plan = json.loads((out / "plan.json").read_text())
    assert plan["compare"]["lr_scales"] == [1.0, 0.1]
    assert list(plan["runs"])[::6] == ["lr-x1/opd-s0", "lr-x0.1/opd-s0"]


def test_without_regimes_the_comparison_is_laid_out_as_before(monkeypatch, tmp_path):
    reports = _stub_stages(monkeypatch)
    out = tmp_path / "cmp"
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=out, scales=""))
    console = Console(record=True, width=200)
    run.compare(path, console=console)
    assert reports == [out]
    assert json.loads((out / "claims.json").read_text())[0]["verdict"] == "holds"
    assert not list(out.glob("claims_by_regime.*")) and not list(out.glob("lr-x*"))
    plan = json.loads((out / "plan.json").read_text())
    # plan.json as it was before lr_scales, so existing comparisons resume.
    assert "lr_scales" not in plan["compare"] and list(plan["runs"])[:2] == ["opd-s0", "rl-s0"]
    assert f"\n          holds: {TOP1}\n" in console.export_text()
