"""`foresight analyze` on checkpoint folders with any names: the step from trainer_state.json, else
the name, else --steps; a missing path says so; a non-empty --out needs --overwrite.

.venv/bin/python -m pytest tests/dynamics/test_any_names.py -q
"""

from __future__ import annotations

import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from foresight.analyze_command import analyze_command
from foresight.dynamics.reading import step_of
from foresight.errors import UserError


@pytest.fixture(scope="module")
def app():
    application = typer.Typer()
    application.callback()(lambda: None)
    application.command("analyze")(analyze_command)
    return application


@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def analyze(base, checkpoints, out, cfg, scorer=None):
        calls.append(checkpoints)
        return {"overall": [{"dynamics/top1pct_energy": 0.9}]}

    monkeypatch.setattr("foresight.dynamics.analysis.analyze", analyze)
    return calls


def invoke(app, *args):
    return CliRunner().invoke(app, ["analyze", *map(str, args)])


def test_steps_come_from_trainer_state_then_the_name(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "trainer_state.json").write_text(json.dumps({"global_step": 500}))
    named = tmp_path / "checkpoint-120"
    named.mkdir()
    assert step_of(final) == 500 and step_of(named) == 120
    (tmp_path / "latest").mkdir()  # no state file, no digits in the name
    with pytest.raises(UserError, match="--steps"):
        step_of(tmp_path / "latest")
    with pytest.raises(UserError, match="No such"):
        step_of(tmp_path / "absent")


def test_any_names_with_steps_given(app, llama_series, recorded, tmp_path):
    base, checkpoints = llama_series
    renamed = []
    for name, (_, path) in zip(("early", "final"), checkpoints[:2]):
        renamed.append(tmp_path / name)
        shutil.copytree(path, renamed[-1])
    result = invoke(app, base, *renamed, "--steps", "20,10", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert recorded == [[(10, renamed[1]), (20, renamed[0])]]  # ordered by step
    result = invoke(app, base, *renamed, "--out", tmp_path / "out2")
    assert result.exit_code != 0 and "--steps" in str(result.exception)


def test_missing_path_and_non_empty_out(app, llama_series, recorded, tmp_path):
    base, checkpoints = llama_series
    result = invoke(app, base, tmp_path / "nope", "--out", tmp_path / "out")
    assert "No such folder" in str(result.exception)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("old")
    result = invoke(app, base, checkpoints[0][1], "--out", tmp_path / "out")
    assert "--overwrite" in str(result.exception)
    result = invoke(app, base, checkpoints[0][1], "--out", tmp_path / "out", "--overwrite")
    assert result.exit_code == 0, result.output
