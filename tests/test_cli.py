"""The real CLI: a 2-step smoke run of configs/tiny.yaml, and every bad input ending in exit code 2
with one sentence naming the problem (never a traceback), leaving existing files untouched.

Run: .venv/bin/python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import micro_config, run_cli, save_micro_model

from foresight.config import config_to_yaml
from foresight.log import quiet, read_metrics

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_tiny_config_trains_two_steps_through_the_cli(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "configs/tiny.yaml",
        "--set",
        f"train.out_dir={tmp_path / 'run'}",
    )
    assert code == 0, err
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/accuracy" in rows[-1]
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def test_eval_prints_a_table_and_with_json_one_json_line(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(monkeypatch, capsys, "eval", "models/arith/teacher", "--n", "16")
    assert code == 0, err
    table_accuracy = float(
        next(line for line in out.splitlines() if "eval/accuracy " in line).split()[-2]
    )
    assert "eval · generating 16/16" in err and "scored 16 prompts of arith (split test)" in err
    code, out, err = run_cli(
        monkeypatch, capsys, "eval", "models/arith/teacher", "--n", "16", "--json"
    )
    assert code == 0, err
    assert len(out.splitlines()) == 1
    scores = json.loads(out)
    assert list(scores) == ["eval/accuracy", "eval/accuracy_sampled", "eval/prompts"]
    assert scores["eval/prompts"] == 16 and round(scores["eval/accuracy"], 4) == table_accuracy


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim:\n  lrr: 0.1\n", "unknown key 'optim.lrr'"),
        ("train:\n  steps: many\n", "'train.steps' is invalid"),
        ("optim: [1, 2]\n", "'optim' is invalid"),
        ("model:\n  student: /nonexistent/base\n", "model folder /nonexistent/base does not exist"),
        ("task:\n  name: sudoku\n", "Unknown task 'sudoku'"),
        ("task:\n  name: jsonl\n", "task.path is required"),
        ("model:\n  device: gpu\n", "model.device 'gpu' is not a device name"),
        ("model:\n  teacher_device: gpu\n", "model.teacher_device 'gpu' is not a device name"),
    ],
)
def test_bad_config_exits_2_with_one_sentence(monkeypatch, capsys, tmp_path, text, message):
    monkeypatch.chdir(REPO)
    text += f"train:\n  out_dir: {tmp_path / 'run'}\n" if "train:" not in text else ""
    code, _, err = run_cli(monkeypatch, capsys, "train", str(write_config(tmp_path, text)))
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "method, kind, fits",
    [
        ("rl", "reverse_kl", "grpo"),
        ("rl", "sampled_rkl", "grpo"),
        ("sft", "gjsd", "cross_entropy"),
        ("opd", "grpo", "sampled_rkl or reverse_kl or forward_kl or gjsd"),
        ("opd", "cross_entropy", "sampled_rkl or reverse_kl or forward_kl or gjsd"),
    ],
)
def test_loss_kind_that_does_not_fit_the_method_exits_2(
    monkeypatch, capsys, tmp_path, method, kind, fits
):
    """config.LOSS_KINDS: a (train.method, loss.kind) pair outside it is bad input, in the file or
    on the command line, named in one sentence with the kinds that fit."""
    monkeypatch.chdir(REPO)
    method_only = tmp_path / "method.yaml"
    method_only.write_text(f"train:\n  method: {method}\n  out_dir: {tmp_path / 'run'}\n")
    both = write_config(tmp_path, method_only.read_text() + f"loss:\n  kind: {kind}\n")
    for args in ((str(both),), (str(method_only), "--set", f"loss.kind={kind}")):
        code, _, err = run_cli(monkeypatch, capsys, "train", *args)
        assert code == 2
        assert f"loss.kind '{kind}' does not fit train.method '{method}'" in err
        assert f"use {fits}" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_teacher_with_another_tokenizer_is_refused(monkeypatch, capsys, tmp_path, micro_pair):
    other = save_micro_model(tmp_path / "other_teacher", 1, alphabet="0123456789abc=#")
    cfg = micro_config(micro_pair[0], other, tmp_path / "run")
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(write_config(tmp_path, config_to_yaml(cfg)))
    )
    assert code == 2 and "teacher's tokenizer vocabulary differs" in err


def test_dataset_without_answers_is_refused(monkeypatch, capsys, tmp_path, micro_pair):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1="}\n')
    cfg = micro_config(*micro_pair, tmp_path / "run", task={"name": "jsonl", "path": str(data)})
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(write_config(tmp_path, config_to_yaml(cfg)))
    )
    assert code == 2 and "data.jsonl" in err and "answer" in err
    assert not (tmp_path / "run").exists()


def test_existing_run_is_neither_overwritten_nor_mixed(monkeypatch, capsys, tmp_path, micro_pair):
    cfg = micro_config(*micro_pair, tmp_path / "run", train={"steps": 1})
    config_file = write_config(tmp_path, config_to_yaml(cfg))
    assert run_cli(monkeypatch, capsys, "train", str(config_file))[0] == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config_file))
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    assert run_cli(monkeypatch, capsys, "train", str(config_file), "--overwrite")[0] == 0


def test_missing_config_file_exits_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err


def test_version_is_the_installed_distributions(monkeypatch, capsys):
    from importlib.metadata import version

    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out == f"foresight {version('foresight')}\n"


def test_train_help_names_every_method(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "train", "--help")
    assert code == 0 and "OPD, RL (GRPO) or SFT" in " ".join(out.split())


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_only_the_result_before_or_after_the_command(monkeypatch, capsys, where):
    monkeypatch.chdir(REPO)
    args = ["eval", "models/arith/teacher", "--n", "4", "--json"]
    args = ["-q", *args] if where == "before" else [*args, "-q"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and err == ""
    assert json.loads(out)["eval/prompts"] == 4
    assert not quiet()  # the process's own default again, for whatever runs next in it


def test_verbose_adds_the_libraries_info_logs():
    """In a process of its own: transformers' log handler keeps the stderr it first saw, which
    in-process capture replaces."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "foresight", "eval", "models/arith/teacher", "--n", "2"]
    verbose = subprocess.run([*args, "-v"], cwd=REPO, capture_output=True, text=True)
    assert verbose.returncode == 0, verbose.stderr
    assert "[transformers] loading configuration file" in verbose.stderr
    assert "eval · generating 2/2" in verbose.stderr  # our own lines stay


def test_quiet_and_verbose_together_exit_2(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "-v", "eval", "models/arith/teacher", "-q")
    assert code == 2 and err == "error: Pass -q (quiet) or -v (verbose), not both.\n"


def test_eval_of_a_checkpoint_uses_its_runs_eval_settings(
    monkeypatch, capsys, tmp_path, micro_pair
):
    """A checkpoint carries its run's config: `foresight eval` then scores what training's last
    evaluation scored (same split, prompts, max_new_tokens, batch, seed), so the accuracies agree
    exactly; a flag given replaces one setting."""
    cfg = micro_config(
        *micro_pair,
        tmp_path / "run",
        rollout={"max_new_tokens": 7},
        eval={"n_prompts": 6, "batch_size": 4, "split": "test"},
        log={"tensorboard": False, "progress": True, "progress_every": 1},
    )
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(write_config(tmp_path, config_to_yaml(cfg)))
    )
    assert code == 0, err
    assert "train · step 1/2" in err and "train · step 2/2" in err  # no terminal: plain lines
    final = read_metrics(tmp_path / "run")[-1]
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    for args in ((str(checkpoint),), (str(checkpoint), "--config", str(tmp_path / "run"))):
        code, out, err = run_cli(monkeypatch, capsys, "eval", *args, "--json")
        assert code == 0, err
        scores = json.loads(out)
        assert scores["eval/prompts"] == 6
        for key in ("eval/accuracy", "eval/accuracy_sampled"):
            assert scores[key] == final[key]
        assert "eval settings of" in err and "split test" in err
    code, out, err = run_cli(monkeypatch, capsys, "eval", str(checkpoint), "--n", "3", "--json")
    assert code == 0 and json.loads(out)["eval/prompts"] == 3


def test_eval_config_folder_without_config_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(
        monkeypatch, capsys, "eval", "models/arith/teacher", "--config", str(tmp_path)
    )
    assert code == 2 and "holds no config.yaml" in err and len(err.splitlines()) == 1


def test_analyze_labels_its_progress(monkeypatch, capsys, tmp_path, micro_pair):
    cfg = micro_config(*micro_pair, tmp_path / "run")
    assert (
        run_cli(monkeypatch, capsys, "train", str(write_config(tmp_path, config_to_yaml(cfg))))[0]
        == 0
    )
    code, out, err = run_cli(
        monkeypatch, capsys, "analyze", str(tmp_path / "run"), "--out", str(tmp_path / "report")
    )
    assert code == 0, err
    # The micro model has 25 tensors (2 layers); without a terminal about ten lines, the last one
    # at the end.
    lines = [line for line in err.splitlines() if line.startswith("analyze · measuring tensors")]
    assert len(lines) >= 2 and lines[-1].startswith("analyze · measuring tensors 25/25")
    assert "report:" in out
