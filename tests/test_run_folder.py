"""Nothing lost, nothing silent: folder safety, one writer per run folder, resume past a damaged
checkpoint, a full disk, non-finite steps, and inputs refused with exit 2 and one sentence. Each
test reproduces a failure a careless or unlucky user hit, through the real CLI where one exists.

Run: .venv/bin/python -m pytest tests/test_run_folder.py -q
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import builders
import pytest
import torch
from safetensors.torch import load_file, save_file

from foresight.prepare import remove_dead_scratch
from foresight.run_folder import RUN_MARKER, RunLock

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "rollout.prompts_per_step=4", "--set", "rollout.max_new_tokens=8"]
FAST += ["--set", "eval.n_prompts=4", "--set", "log.progress=false"]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(REPO)
    return builders.run_cli(monkeypatch, capsys, *args)


def train(monkeypatch, capsys, run: Path, *extra: str) -> tuple[int, str, str]:
    args = ["train", "configs/tiny.yaml", "--set", f"train.out_dir={run}", *FAST, *extra]
    return run_cli(monkeypatch, capsys, *args)


def one_sentence(err: str) -> bool:
    """stderr ends in exactly one line `error: ...`, with no traceback; progress lines (stderr
    without a terminal) may come before it."""
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    return err.endswith("\n") and errors == lines[-1:] and "Traceback" not in err


def test_overwrite_refuses_folders_foresight_did_not_write(monkeypatch, capsys, tmp_path):
    keep = tmp_path / "mine" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("precious")
    code, _, err = train(monkeypatch, capsys, keep.parent, "--overwrite")
    assert code == 2 and one_sentence(err) and RUN_MARKER in err
    assert keep.read_text() == "precious"
    for folder in (".", "models", str(REPO.parent)):  # the current folder, models, a parent
        code, _, err = train(monkeypatch, capsys, Path(folder), "--overwrite")
        assert code == 2 and one_sentence(err), err
    assert (REPO / "models" / "arith" / "base" / "config.json").is_file()
    assert (REPO / ".git").is_dir()


def test_overwrite_replaces_a_run_foresight_wrote(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, "--set", "train.steps=1")[0] == 0
    code, _, err = train(monkeypatch, capsys, run, "--set", "train.steps=1", "--overwrite")
    assert code == 0, err
    assert (run / RUN_MARKER).is_file() and (run / "checkpoints" / "step-000001").is_dir()


def test_a_second_writer_is_refused_at_once_naming_the_holder(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run).acquire()  # this process plays the first run
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, _, err = train(monkeypatch, capsys, run, *extra)
            assert code == 2 and one_sentence(err), err
            assert f"process {os.getpid()}" in err or "Nothing to resume" in err
    finally:
        lock.release()
    assert [p.name for p in run.iterdir()] == [".lock"]  # nothing was written or deleted


@pytest.mark.slow
def test_two_processes_started_together_one_runs_one_exits_2(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "foresight", "train", "configs/tiny.yaml"]
    command += ["--set", f"train.out_dir={run}", *FAST]
    processes = [
        subprocess.Popen(
            [*command, "--set", f"train.seed={seed}"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "error: " in refused and "Traceback" not in refused
    saved = (run / "config.yaml").read_text()
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    assert f"seed: {winner}" in saved  # one run's config, and one run's checkpoints only


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("missing", "trainer_state.pt is missing"),
        ("truncated", "trainer_state.pt has"),
        ("garbage config", "config.json does not match its checksum"),
        ("emptied", "no manifest.json"),
    ],
)
def test_resume_falls_back_past_a_damaged_checkpoint(monkeypatch, capsys, tmp_path, damage, reason):
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, "--set", "train.checkpoint_every=1")[0] == 0
    newest = run / "checkpoints" / "step-000002"
    state = newest / "trainer_state.pt"
    if damage == "missing":
        state.unlink()
    elif damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "garbage config":
        size = (newest / "config.json").stat().st_size  # same size: only the checksum tells
        (newest / "config.json").write_bytes(b"x" * size)
    else:
        shutil.rmtree(newest)
        newest.mkdir()
    leftover = run / "checkpoints" / "step-000003.tmp-999999"  # a killed process's
    leftover.mkdir()
    extra = ["--set", "train.checkpoint_every=1", "--set", "train.steps=3", "--resume"]
    code, _, err = train(monkeypatch, capsys, run, *extra)
    assert code == 0, err
    assert "skipping checkpoint step 2" in err and reason in err, err
    assert "resuming" in err and "from step 1" in err
    assert not leftover.exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]


def test_quiet_resume_hides_the_resuming_line_but_not_a_skipped_checkpoint(
    monkeypatch, capsys, tmp_path
):
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, "--set", "train.checkpoint_every=1")[0] == 0
    (run / "checkpoints" / "step-000002" / "trainer_state.pt").unlink()
    extra = ["--set", "train.checkpoint_every=1", "--set", "train.steps=3", "--resume", "-q"]
    code, _, err = train(monkeypatch, capsys, run, *extra)
    assert code == 0, err
    assert "skipping checkpoint step 2" in err  # a warning: -q keeps it
    assert "resuming" not in err  # an info line: -q hides it


def test_a_moved_run_folder_resumes(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, "--set", "train.steps=1")[0] == 0
    moved = run.rename(tmp_path / "renamed")
    code, _, err = train(monkeypatch, capsys, moved, "--set", "train.steps=2", "--resume")
    assert code == 0, err
    assert (moved / "checkpoints" / "step-000002").is_dir()


def test_a_full_disk_ends_in_one_sentence_and_stays_resumable(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    real_save = torch.save

    def full_at_step_two(obj, path, *args, **kwargs):
        if "step-000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_two)
    code, _, err = train(monkeypatch, capsys, run, "--set", "train.checkpoint_every=1")
    assert code == 2 and one_sentence(err) and "full" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
    monkeypatch.setattr(torch, "save", real_save)
    code, _, err = train(monkeypatch, capsys, run, "--set", "train.checkpoint_every=1", "--resume")
    assert code == 0 and "from step 1" in err, err


def strict_rows(run: Path) -> list[dict]:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines]


def all_finite(run: Path) -> bool:
    weights = [load_file(p) for p in run.glob("checkpoints/step-*/model.safetensors")]
    return bool(weights) and all(bool(torch.isfinite(t).all()) for w in weights for t in w.values())


def test_a_non_finite_step_stops_before_the_optimizer(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    extra = ["--set", "optim.lr=1e30", "--set", "train.method=sft", "--set", "train.steps=4"]
    code, _, err = train(monkeypatch, capsys, run, *extra, "--set", "train.checkpoint_every=1")
    assert code == 2 and one_sentence(err) and "Step 2" in err and "optim.lr" in err, err
    assert all_finite(run)  # no checkpoint ever holds a NaN
    strict_rows(run)


def test_skip_drops_non_finite_steps_and_goes_on(monkeypatch, capsys, tmp_path):
    """train.on_nonfinite=skip: a step whose loss is NaN leaves the weights exactly as they were."""
    import foresight.train.loop as loop

    real = loop.micro_batch_loss
    calls = []

    def nan_on_second_step(*args, **kwargs):
        loss, *metrics = real(*args, **kwargs)
        calls.append(1)
        return (loss * math.nan if len(calls) == 2 else loss), *metrics

    monkeypatch.setattr(loop, "micro_batch_loss", nan_on_second_step)
    extra = ["--set", "train.on_nonfinite=skip", "--set", "train.steps=3"]
    code, _, err = train(
        monkeypatch, capsys, tmp_path / "run", *extra, "--set", "train.checkpoint_every=1"
    )
    assert code == 0, err
    rows = strict_rows(tmp_path / "run")
    assert rows[2]["loss"] is None and rows[2]["optim/nonfinite_steps"] == 1
    before, after = (
        load_file(tmp_path / "run" / "checkpoints" / f"step-00000{s}" / "model.safetensors")
        for s in (1, 2)
    )
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert rows[3]["optim/nonfinite_steps"] == 1 and math.isfinite(rows[3]["loss"])


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("optim.lr=.inf", "optim.lr"),
        ("rollout.temperature=.nan", "rollout.temperature"),
        ("train.threads=100000", "train.threads"),
        ("train.seed=100000000000000000000", "train.seed"),
        ("train.seed=-1", "train.seed"),
        ("model.device=meta", "model.device"),
        ("model.teacher_device=mps", "model.teacher_device"),
        ("model.teacher=README.md", "is a file"),
        ("task.name=jsonl", "task.path"),
        ("task.path=configs", "is a folder"),
    ],
)
def test_bad_settings_get_exit_2_and_one_sentence(monkeypatch, capsys, tmp_path, setting, words):
    if setting.startswith("task.path"):
        setting = f"{setting} --set task.name=jsonl"
    extra = [part for item in setting.split(" --set ") for part in ("--set", item)]
    code, _, err = train(monkeypatch, capsys, tmp_path / "run", *extra)
    assert code == 2 and one_sentence(err) and words in err, err
    assert not (tmp_path / "run").exists()  # refused before the folder was made


def test_a_file_as_run_folder_and_a_non_utf8_config_are_refused(monkeypatch, capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = train(monkeypatch, capsys, a_file)
    assert code == 2 and one_sentence(err) and "is a file" in err, err
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("train:\n  steps: 2\n", encoding="utf-16")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(utf16))
    assert code == 2 and one_sentence(err) and "UTF-8" in err, err


def test_prepare_never_replaces_models_silently(monkeypatch, capsys, tmp_path):
    target = tmp_path / "models" / "arith"
    (target / "base").mkdir(parents=True)
    (target / "base" / "config.json").write_text("{}")
    code, _, err = run_cli(
        monkeypatch, capsys, "prepare", "--task", "arith", "--out", str(target.parent)
    )
    assert code == 2 and one_sentence(err) and "--overwrite" in err, err
    args = ["prepare", "--task", "arith", "--out", str(target.parent), "--overwrite"]
    code, _, err = run_cli(monkeypatch, capsys, *args)  # no prepare.json: not prepare's folder
    assert code == 2 and one_sentence(err) and "prepare.json" in err, err
    assert (target / "base" / "config.json").read_text() == "{}"


KILL_INSIDE_WRITE = """
import os, signal, sys
import foresight.checkpoint as checkpoint

real = checkpoint._write

def dies_mid_write(folder, step, model, *args):
    if step == 3:  # the weights are on disk, the state and manifest are not
        model.save_pretrained(folder)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(folder, step, model, *args)

checkpoint._write = dies_mid_write
from foresight.cli import main
sys.argv = ["foresight", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_resumes_bit_identical(tmp_path):
    args = ["train", "configs/tiny.yaml", *FAST, "--set", "train.steps=4"]
    args += ["--set", "train.checkpoint_every=1"]
    for name, prefix in (("whole", ["-m", "foresight"]), ("killed", ["-c", KILL_INSIDE_WRITE])):
        command = [sys.executable, *prefix, *args, "--set", f"train.out_dir={tmp_path / name}"]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == (0 if name == "whole" else -9), result.stderr[-2000:]
    killed = tmp_path / "killed"
    assert list((killed / "checkpoints").glob("step-000003.tmp-*"))  # half a checkpoint left
    command = [sys.executable, "-m", "foresight", *args, "--set", f"train.out_dir={killed}"]
    result = subprocess.run(
        [*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "from step 2" in result.stderr, result.stderr[-2000:]
    assert not list((killed / "checkpoints").glob("*.tmp-*"))
    for step in (3, 4):
        expected, got = (
            load_file(tmp_path / run / "checkpoints" / f"step-00000{step}" / "model.safetensors")
            for run in ("whole", "killed")
        )
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"step {step} differs"


def test_analyze_and_eval_refuse_broken_checkpoints_in_one_sentence(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, "--set", "train.checkpoint_every=1")[0] == 0
    weights = run / "checkpoints" / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated
    code, _, err = run_cli(monkeypatch, capsys, "analyze", str(run), "--out", str(tmp_path / "a"))
    assert code == 2 and one_sentence(err) and "safetensors" in err, err
    nan_model = tmp_path / "nan"
    shutil.copytree(REPO / "models" / "arith" / "base", nan_model)
    tensors = load_file(nan_model / "model.safetensors")
    save_file({k: v * math.nan for k, v in tensors.items()}, nan_model / "model.safetensors")
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(nan_model), "--n", "4")
    assert code == 2 and one_sentence(err) and "NaN" in err, err


def test_killed_prepares_scratch_folders_are_removed(tmp_path):
    out = tmp_path / "models" / "arith"
    out.parent.mkdir()
    dead = out.parent / ".arith.tmp-999999-abc"  # no such process
    alive = out.parent / f".arith.tmp-{os.getpid()}-abc"  # this one is running
    dead.mkdir(), alive.mkdir()
    remove_dead_scratch(out)
    assert not dead.exists() and alive.exists()
