"""`foresight compare` end to end on the micro models (runs, analyses, report, claims; rerun reuses),
and its report's header, numbers and figures on a small analysis.

Run: .venv/bin/python -m pytest tests/compare/test_compare.py -q
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_cli import run_cli

from foresight.checkpoint import list_checkpoints

VERDICTS = {"holds", "does not hold", "inconclusive"}

YAML = """
model: {{student: {student}, teacher: {teacher}}}
task: {{name: arith}}
rollout: {{prompts_per_step: 4, max_new_tokens: 8}}
eval: {{every: 100, n_prompts: 8, batch_size: 8}}
log: {{tensorboard: false, progress: false}}
dynamics: {{probes: [scaling, embedding_swap, window, rescaling], window: 0, n_prompts: 8,
            rescale_betas: [1.0], scaling_alphas: [0.0, 1.0]}}
compare:
  out_dir: {out}
  seeds: [0, 1]
  steps: 27
  early_checkpoints: 8
  methods:
    opd: {{lr: 1.0e-2}}
    rl: {{lr: 1.0e-2, set: [rollout.group_size=2]}}
    sft: {{lr: 1.0e-2}}
"""


@pytest.mark.slow
def test_compare_runs_analyzes_reports_and_resumes(monkeypatch, capsys, tmp_path, micro_pair):
    out = tmp_path / "cmp"
    config = tmp_path / "compare.yaml"
    config.write_text(YAML.format(student=micro_pair[0], teacher=micro_pair[1], out=out))
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", str(config))
    assert code == 0, err
    for label in ("opd-s0", "rl-s0", "sft-s0", "opd-s1", "rl-s1", "sft-s1"):
        steps = [step for step, _ in list_checkpoints(out / "runs" / label)]
        assert len([s for s in steps if s <= 0.3 * 27]) >= 8 and steps[-1] == 27
        assert (out / "analysis" / label / "probes" / "window.csv").is_file()
    claims = json.loads((out / "claims.json").read_text())
    # Probe claims need a gain over the base, which random micro models may lack.
    assert len(claims) == 9 and all(
        row["verdict"] in VERDICTS or row["verdict"].startswith("not measured") for row in claims
    )
    table1 = [row for row in claims if row["measure"] in ("top1pct_energy", "effective_rank")]
    assert all(row["verdict"] in VERDICTS and row["opd"]["n"] == 2 for row in table1)
    page = (out / "report.html").read_text()
    assert "Table 1" in page and "Claims" in page and page.count("<img") >= 5

    # An interrupted run resumes from its last checkpoint; everything finished is reused.
    shutil.rmtree(out / "runs" / "rl-s1" / "checkpoints" / "step-000027")
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", str(config))
    assert code == 0, err
    assert "opd-s0: finished earlier, reused" in stdout and "rl-s1: training" in stdout
    assert list_checkpoints(out / "runs" / "rl-s1")[-1][0] == 27

    # Other settings never mix into an existing comparison.
    code, stdout, err = run_cli(
        monkeypatch, capsys, "compare", str(config), "--set", "optim.lr=0.5"
    )
    assert code == 2 and "--overwrite" in err


def test_compare_report_header_numbers_and_figures_read_cleanly(monkeypatch, tmp_path):
    from figure_checks import capture, problems
    from report_builders import analysis_report, compare_report

    from foresight.compare import figures

    drawn = capture(monkeypatch, figures)
    analysis, _ = analysis_report(tmp_path)
    out = compare_report(tmp_path, analysis)
    assert set(drawn) == {"accuracy", "alignment", "allocation", "scaling", "window"}
    for stem, fig in drawn.items():
        assert problems(fig) == [], stem
    kinds = [t.get_text() for t in drawn["allocation"].axes[1].get_yticklabels()]
    assert kinds[:2] == ["embeddings", "attention query"] and "MLP down" in kinds
    page = (out / "report.html").read_text()
    assert f"<th>Comparison</th><td>{out}</td>" in page
    assert "opd: loss sampled_rkl, lr 0.0005; rl: loss grpo, lr 0.0001, groups of 4" in page
    assert "2: seeds 0, each 27 optimizer steps of 4 prompts" in page
    assert "https://arxiv.org/abs/2605.11739" in page
    assert "<th>Top-1% energy ratio of ΔW</th>" in page  # readable, not `top1pct_energy`
    # One seed: no spread and no interval, said in words; 3 significant digits throughout.
    claims = page.split("<h2>Claims")[1].split("</table>")[0]
    assert "(no interval with one seed)" in claims and " ± " not in claims
    cells = re.findall(r"<td>(?:opd|rl): ([-0-9.e]+) \(n=1\)", page)
    assert cells and all(len(re.sub(r"^-?0\.0*|[.-]|e.*$", "", c)) <= 3 for c in cells)


def test_mean_and_spread_have_three_and_two_significant_digits():
    from foresight.compare.report import fmt

    assert fmt({"mean": 0.0589, "sd": 0.000546, "n": 3}) == "0.0589 ± 0.00055 (n=3)"
    assert fmt({"mean": 58.93, "sd": None, "n": 1}) == "58.9 (n=1)"
    assert fmt({"mean": None, "sd": None, "n": 0}) == "n/a"
