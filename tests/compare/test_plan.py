"""The compare plan: shared schedule, per-method settings, bad input refused.

Run: .venv/bin/python -m pytest tests/compare/test_plan.py -q
"""

from __future__ import annotations

import pytest

from foresight.compare.plan import checkpoint_schedule, load_plan
from foresight.errors import UserError

YAML = """
model: {{student: models/arith/base, teacher: models/arith/teacher}}
task: {{name: arith}}
rollout: {{prompts_per_step: 8}}
compare:
  out_dir: {out}
  seeds: [0, 1]
  steps: 100
  methods:
    opd: {{lr: 1.0e-3, set: [loss.kind=reverse_kl]}}
    rl: {{lr: 1.0e-4, set: [rollout.group_size=4]}}
    sft: {{lr: 5.0e-4}}
  quick: {{seeds: [3], steps: 40}}
"""


def test_schedule_is_dense_in_the_first_30_percent():
    schedule = checkpoint_schedule(100, 10)
    assert [s for s in schedule if s <= 30] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert [s for s in schedule if s > 30] == [40, 50, 60, 70, 80, 90, 100]
    assert len([s for s in checkpoint_schedule(27, 8) if s <= 0.3 * 27]) == 8
    with pytest.raises(UserError, match="raise compare.steps to at least 27"):
        checkpoint_schedule(26, 8)


def test_every_run_shares_prompts_steps_and_schedule(tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=tmp_path / "cmp"))
    settings, runs = load_plan(path)
    assert [r.label for r in runs] == ["opd-s0", "rl-s0", "sft-s0", "opd-s1", "rl-s1", "sft-s1"]
    assert {r.cfg.rollout.prompts_per_step for r in runs} == {8}
    assert {tuple(r.cfg.train.checkpoint_at) for r in runs} == {tuple(checkpoint_schedule(100, 10))}
    by_label = {r.label: r.cfg for r in runs}
    assert by_label["rl-s1"].train.method == "rl" and by_label["rl-s1"].rollout.group_size == 4
    assert by_label["rl-s1"].optim.lr == 1e-4 and by_label["rl-s1"].train.seed == 1
    assert by_label["sft-s0"].train.sft_source == "teacher"
    assert by_label["opd-s0"].train.out_dir == tmp_path / "cmp" / "runs" / "opd-s0"
    settings, quick = load_plan(path, quick=True, overrides=["optim.weight_decay=0.1"])
    assert settings.out_dir == tmp_path / "cmp-quick"  # never mixed with the full comparison
    assert [r.label for r in quick] == ["opd-s3", "rl-s3", "sft-s3"]
    assert {r.cfg.train.steps for r in quick} == {40}
    assert {r.cfg.optim.weight_decay for r in quick} == {0.1}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("opd: {lr: 1.0e-3, set: [loss.kind=reverse_kl]}", "opd: {lr: -1}"), "lr"),
        (("    opd: {lr: 1.0e-3, set: [loss.kind=reverse_kl]}\n", ""), "needs 'opd'"),
        (("rollout.group_size=4", "rollout.group_size=1"), "group_size >= 2"),
        (("steps: 100", "steps: 20"), "raise compare.steps"),
        (("seeds: [0, 1]", "seeds: [0, 0]"), "repeats a seed"),
    ],
)
def test_bad_compare_config_is_refused_with_its_fix(tmp_path, edit, message):
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=tmp_path / "cmp").replace(*edit))
    with pytest.raises(UserError, match=message):
        load_plan(path)
