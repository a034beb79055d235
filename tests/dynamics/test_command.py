"""`foresight analyze` through typer: run folders, explicit checkpoints, compare, probes, errors.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import re
import sys
import types

import pytest
import typer
from typer.testing import CliRunner

from foresight.analyze_command import analyze_command
from foresight.config_sections import TaskConfig
from foresight.errors import UserError

from .series import DistanceScorer, write_series


@pytest.fixture(scope="module")
def app():
    """The command registered the way the main app registers it."""
    application = typer.Typer()
    application.callback()(lambda: None)  # a group, so "analyze" is a subcommand as in cli.py
    application.command("analyze")(analyze_command)
    return application


def invoke(app, *args):
    return CliRunner().invoke(app, ["analyze", *map(str, args)])


@pytest.fixture
def recorded(monkeypatch):
    """Replace analyze and compare by recorders: these tests are about argument handling, and
    test_analysis.py runs the real pipeline."""
    calls = {"analyze": [], "compare": []}

    def analyze(base, checkpoints, out, cfg, scorer=None):
        calls["analyze"].append((base, checkpoints, out, cfg, scorer))
        return {"overall": [{"dynamics/top1pct_energy": 0.9}]}

    monkeypatch.setattr("foresight.dynamics.analysis.analyze", analyze)
    monkeypatch.setattr(
        "foresight.dynamics.analysis.compare", lambda runs, out: calls["compare"].append(runs)
    )
    return calls


def test_registering_the_command_stays_light():
    """The CLI imports this module at startup: it must not drag in torch or matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys, foresight.analyze_command; "
        "print(any(m in sys.modules for m in ('torch', 'matplotlib')))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"


def test_run_folder_through_the_real_pipeline(app, llama_series, tmp_path):
    run = llama_series[1][0][1].parent.parent
    result = invoke(app, run, "--out", tmp_path / "a", "--set", "dynamics.alignment_k=5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "report.html").is_file()
    assert "top-1% energy" in " ".join(result.output.split())  # rich wraps at the console width


def test_explicit_checkpoints_take_steps_from_names(app, llama_series, recorded, tmp_path):
    base, checkpoints = llama_series
    result = invoke(app, base, *(path for _, path in checkpoints), "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (call,) = recorded["analyze"]
    assert call[0] == base and call[1] == checkpoints and call[4] is None


def test_compare_runs(app, llama_series, recorded, tmp_path):
    run_a = llama_series[1][0][1].parent.parent
    write_series(tmp_path / "other", seed=2)
    run_b = tmp_path / "other" / "run"
    result = invoke(app, "--compare", run_a, run_b, "--out", tmp_path / "cmp")
    assert isinstance(result.exception, UserError)  # both folders are named "run"
    renamed = run_b.rename(tmp_path / "other" / "run_b")
    result = invoke(app, "--compare", run_a, renamed, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert recorded["compare"][-1] == {
        "run": tmp_path / "cmp" / "run",
        "run_b": tmp_path / "cmp" / "run_b",
    }
    assert recorded["analyze"][-1][0] == tmp_path / "other" / "base"  # from run_b's config.yaml


def test_probes_use_the_task_scorer(app, llama_series, recorded, tmp_path, monkeypatch):
    base, checkpoints = llama_series
    calls = []
    scorer = DistanceScorer(base, checkpoints[-1][1])

    def task_scorer(task, model_dir, n_prompts, teacher_dir):
        calls.append((task, model_dir, n_prompts, teacher_dir))
        return scorer

    fake = types.ModuleType("foresight.train.evaluate")
    fake.task_scorer = task_scorer
    monkeypatch.setitem(sys.modules, "foresight.train.evaluate", fake)
    run = checkpoints[0][1].parent.parent
    settings = ["--set", "dynamics.probes=[scaling]", "--set", "dynamics.n_prompts=8"]
    result = invoke(app, run, "--probes", *settings, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert calls == [(TaskConfig(name="arith"), base, 8, None)]
    (call,) = recorded["analyze"]
    assert call[3].probes == ["scaling"] and call[4] is scorer
    result = invoke(app, base, checkpoints[0][1], "--probes", "--out", tmp_path / "q")
    assert isinstance(result.exception, UserError) and "--task" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.lr=1"], "not a dynamics setting"),
        (["--set", "dynamics.window=-1"], "dynamics.window|window"),
        (["--set", "dynamics.nope=1"], "unknown key"),
    ],
)
def test_bad_settings_are_user_errors(app, llama_series, recorded, tmp_path, args, message):
    run = llama_series[1][0][1].parent.parent
    result = invoke(app, run, *args, "--out", tmp_path)
    assert isinstance(result.exception, UserError)
    assert re.search(message, str(result.exception))


def test_missing_base_and_mixed_arguments(app, llama_series, recorded, tmp_path):
    base, checkpoints = llama_series
    (tmp_path / "run" / "checkpoints" / "step-000001").mkdir(parents=True)
    result = invoke(app, tmp_path / "run", "--out", tmp_path / "o")
    assert isinstance(result.exception, UserError) and "--base" in str(result.exception)
    result = invoke(app, base, checkpoints[0][1], "--base", base)
    assert isinstance(result.exception, UserError)
