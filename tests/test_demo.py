"""The demo end to end on the committed models, shortened to 2 steps: summary.json and both runs.

Run: .venv/bin/python -m pytest tests/test_demo.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from foresight.demo import run_demo

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_summary_for_opd_and_effopd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    short = [
        "train.steps=2",
        "rollout.prompts_per_step=8",
        "eval.n_prompts=16",
        "log.progress=false",
        "log.tensorboard=false",
        "effopd.n_prompts=8",
    ]
    summary = run_demo(Path("configs/demo.yaml"), short, tmp_path / "demo", test_prompts=100)
    assert (tmp_path / "demo-2").exists() is False
    written = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in (
        "base_accuracy",
        "teacher_accuracy",
        "student_accuracy",
        "steps",
        "wall_seconds",
        "effopd_student_accuracy",
    ):
        assert key in written
    assert written["teacher_accuracy"] - written["base_accuracy"] >= 0.3  # the committed pair's gap
    assert len(written["effopd_accepted_multipliers"]) == 2  # searches after steps 1 and 2
    # Without a terminal each phase prints labelled progress lines (the console stays alive).
    err = capsys.readouterr().err
    for line in (
        "base model · generating 100/100",
        "EffOPD · test · generating 100/100",
        "analysis of plain OPD · measuring tensors",
    ):
        assert line in err
    for run in ("opd", "effopd"):
        assert (
            tmp_path / "demo" / run / "checkpoints" / "step-000002" / "model.safetensors"
        ).is_file()
    again = run_demo(
        Path("configs/demo.yaml"), short, tmp_path / "demo", effopd=False, test_prompts=16
    )
    assert again["run_dir"] == str(tmp_path / "demo-2")  # never over an earlier demo
