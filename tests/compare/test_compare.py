"""`foresight compare` end to end on the micro models: runs, analyses, report, claims; rerun reuses.

Run: .venv/bin/python -m pytest tests/compare/test_compare.py -q
"""

from __future__ import annotations

import json
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
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", str(config), "--set", "optim.lr=0.5")
    assert code == 2 and "--overwrite" in err
