"""The compare plan: shared schedule, per-method settings, learning-rate regimes (and the
--lr-scales option that sets them), bad input refused.

Run: .venv/bin/python -m pytest tests/compare/test_plan.py -q
"""

from __future__ import annotations

import pytest
from builders import run_cli

from foresight.compare import run
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
    # Without lr_scales, one regime at x1 whose folder is OUT itself: the layout of before.
    assert {(r.scale, r.regime_dir) for r in runs} == {(1.0, tmp_path / "cmp")}
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
        (("steps: 100", "steps: 100\n  lr_scales: [1, 0]"), r"lr_scales has 0, .* must be > 0"),
        (("steps: 100", "steps: 100\n  lr_scales: [1, -0.1]"), "list positive numbers"),
        (("steps: 100", "steps: 100\n  lr_scales: [0.1, 1, 0.1]"), "repeats a scale"),
        (("steps: 100", "steps: 100\n  lr_scales: []"), "lr_scales"),
        (("steps: 100", "steps: 100\n  lr_scales: [1, .inf]"), "lr_scales"),
    ],
)
def test_bad_compare_config_is_refused_with_its_fix(tmp_path, edit, message):
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=tmp_path / "cmp").replace(*edit))
    with pytest.raises(UserError, match=message):
        load_plan(path)


def _without_lr_and_folder(cfg) -> dict:
    settings = cfg.model_dump(mode="json")
    del settings["optim"]["lr"], settings["train"]["out_dir"]
    return settings


def test_lr_scales_run_the_whole_plan_once_per_regime(tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=tmp_path / "cmp") + "  lr_scales: [1, 0.1]\n")
    settings, runs = load_plan(path)
    assert settings.lr_scales == [1.0, 0.1]
    labels = ["opd-s0", "rl-s0", "sft-s0", "opd-s1", "rl-s1", "sft-s1"]
    assert [r.label for r in runs] == labels * 2  # regime-major, then seed-major
    tuned, low = runs[:6], runs[6:]
    assert {(r.scale, r.regime_dir) for r in tuned} == {(1.0, tmp_path / "cmp" / "lr-x1")}
    assert {(r.scale, r.regime_dir) for r in low} == {(0.1, tmp_path / "cmp" / "lr-x0.1")}
    assert low[1].cfg.train.out_dir == tmp_path / "cmp" / "lr-x0.1" / "runs" / "rl-s0"
    lrs = {"opd": 1e-3, "rl": 1e-4, "sft": 5e-4}
    for a, b in zip(tuned, low, strict=True):
        assert a.cfg.optim.lr == lrs[a.method]
        assert b.cfg.optim.lr == pytest.approx(0.1 * lrs[b.method], rel=1e-12)
        # Prompts, steps, schedule, method settings: all the same but the rate and the folder.
        assert _without_lr_and_folder(a.cfg) == _without_lr_and_folder(b.cfg)
    # An `optim.lr` override sets every method's rate; the regimes scale that rate.
    _, runs = load_plan(path, overrides=["optim.lr=2e-3"])
    assert [r.cfg.optim.lr for r in runs[::3]] == pytest.approx([2e-3, 2e-3, 2e-4, 2e-4])
    settings, quick = load_plan(path, quick=True)
    assert [r.regime_dir.name for r in quick[::3]] == ["lr-x1", "lr-x0.1"]
    assert {r.regime_dir.parent for r in quick} == {settings.out_dir} == {tmp_path / "cmp-quick"}


def _fake_compare(calls: list):
    """A stand-in for foresight.compare.run.compare that only loads the plan it was given."""

    def fake(path, quick=False, overrides=(), overwrite=False, console=None):
        calls.append(load_plan(path, quick, list(overrides)))

    return fake


def test_lr_scales_option_becomes_the_plans_regimes(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(run, "compare", _fake_compare(calls))
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=tmp_path / "cmp"))
    args = ["compare", str(path), "--set", "compare.lr_scales=[3]", "--lr-scales", "1, 0.1,1e-2"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    settings, runs = calls[0]
    assert settings.lr_scales == [1.0, 0.1, 0.01]  # the option wins over --set
    assert [r.regime_dir.name for r in runs[::6]] == ["lr-x1", "lr-x0.1", "lr-x0.01"]
    code, _, err = run_cli(monkeypatch, capsys, "compare", str(path))
    assert code == 0 and calls[1][0].lr_scales == [1.0], err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,x", "--lr-scales takes comma-separated positive multipliers"),
        ("0", "--lr-scales takes"),
        ("1,-0.1", "--lr-scales takes"),
        ("1,,0.1", "--lr-scales takes"),
        ("", "--lr-scales takes"),
        ("nan", "--lr-scales takes"),
        ("1,1.0", "repeats a scale"),  # well-formed, refused by the plan
    ],
)
def test_bad_lr_scales_option_exits_2_with_one_sentence(
    monkeypatch, capsys, tmp_path, value, message
):
    monkeypatch.setattr(run, "compare", _fake_compare([]))
    path = tmp_path / "compare.yaml"
    path.write_text(YAML.format(out=tmp_path / "cmp"))
    code, _, err = run_cli(monkeypatch, capsys, "compare", str(path), f"--lr-scales={value}")
    lines = err.splitlines()
    assert code == 2 and message in err
    assert lines[-1].startswith("error: ") and "Traceback" not in err
