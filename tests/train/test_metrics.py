"""The per-step metrics train/entropy and train/truncated_share against brute force, and the
experiment trackers of log.report_to (wandb, offline).

Run: .venv/bin/python -m pytest tests/train/test_metrics.py -q
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import micro_config

from foresight.config import config_to_yaml, load_config
from foresight.errors import UserError
from foresight.log import read_metrics
from foresight.models import load_model, load_tokenizer
from foresight.train.loop import make_batch, train, train_step
from foresight.train.rollout import Rollout, ended_with_eos, sample
from foresight.train.scoring import score_tokens
from foresight.train.setup import setup

# Both sides compute in float64 from the same weights: entropy sums V (~20) terms of size
# <= max|p log p| < 0.4, so rounding is ~V * 1.1e-16 ~ 1e-15 per position; the two paths also
# order the LM head's float64 products differently (another ~1e-15 relative on each logit).
# 1e-10 is far above both and far below any real error (a wrong mask or shift moves ~0.1).
FLOAT64_ATOL = 1e-10


def brute_force_entropy(logits: torch.Tensor) -> np.ndarray:
    """H(p) = -Σ_v p_v log p_v at every (b, t) of float64 logits (B, T, V), one position at a
    time, with the softmax written out."""
    rows = logits.detach().double().numpy()
    out = np.zeros(rows.shape[:2])
    for b in range(rows.shape[0]):
        for t in range(rows.shape[1]):
            shifted = np.exp(rows[b, t] - rows[b, t].max())
            p = shifted / shifted.sum()
            out[b, t] = -sum(float(pi * math.log(pi)) for pi in p if pi > 0)
    return out


def completion_entropies(student, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force entropy (B, T-1) at the positions that predict ids[:, 1:], and their mask."""
    inputs = {"attention_mask": rollout.attention_mask, "position_ids": rollout.position_ids}
    with torch.no_grad():
        logits = student(rollout.ids, **inputs).logits[:, :-1]  # (B, T-1, V)
    return brute_force_entropy(logits), rollout.completion_mask[:, 1:].bool().numpy()


@pytest.mark.parametrize(
    "teacher_used, kind, topk",
    [(False, None, None), (True, None, None), (True, "reverse_kl", None), (True, "gjsd", 3)],
)
def test_score_tokens_entropy_matches_brute_force(micro_pair, teacher_used, kind, topk):
    """Every scoring path (student alone, sampled tokens, full vocabulary, top-k buckets) gives
    the student's full-vocabulary entropy from the logits it already has; chunk_tokens=2 splits
    the positions into several chunks."""
    student = load_model(micro_pair[0], "student").double()
    teacher = load_model(micro_pair[1], "teacher").double() if teacher_used else None
    tokenizer = load_tokenizer(micro_pair[0], "student")
    prompts = ["1+2=", "45+67+8=", "7=", "12+3="]
    rollout = sample(student, tokenizer, prompts, 6, 1.0, torch.Generator().manual_seed(3))
    scores = score_tokens(
        student, rollout, teacher, kind, 0.5, 2, teacher_topk=topk, student_entropy=True
    )
    expected, on = completion_entropies(student, rollout)
    got = scores.student_entropy.detach().numpy()
    np.testing.assert_allclose(got[on], expected[on], rtol=0, atol=FLOAT64_ATOL)
    assert not scores.student_entropy.requires_grad  # a metric, never part of the loss
    assert score_tokens(student, rollout, teacher, kind, 0.5, 2).student_entropy is None


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"train": {"micro_batches": 3}},
        {"train": {"method": "rl"}, "rollout": {"group_size": 2}},
    ],
    ids=["opd", "opd-3-micro-batches", "rl"],
)
def test_train_step_logs_entropy_and_truncated_share_of_its_batch(micro_pair, tmp_path, sections):
    """train/entropy is the mean over the step's completion tokens of the student's entropy, and
    train/truncated_share the share of rows cut at max_new_tokens without EOS, both recomputed
    by brute force on the same batch (drawn from the step's seed, so make_batch repeats it)."""
    cfg = micro_config(*micro_pair, tmp_path / "run", **sections)
    cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"max_new_tokens": 5})})
    trainer = setup(cfg)
    trainer.student.double()
    if trainer.frozen is not None:
        trainer.frozen.double()
    trainer.student.eval()
    batch = make_batch(trainer, 1)
    entropy, on = completion_entropies(trainer.student, batch.rollout)
    ended = ended_with_eos(trainer.tokenizer, batch.rollout)
    cut = [not e for e in ended]
    assert 0 < sum(cut) < len(cut)  # a cap where some rows end and others are cut

    stats = train_step(trainer, 1)
    assert abs(stats["train/entropy"] - entropy[on].mean()) < FLOAT64_ATOL
    assert stats["train/truncated_share"] == sum(cut) / len(cut)


def test_sft_logs_entropy_but_no_truncated_share(micro_pair, tmp_path):
    cfg = micro_config(*micro_pair, tmp_path / "run", train={"method": "sft"})
    stats = train_step(setup(cfg), 1)
    assert stats["train/entropy"] > 0 and "train/truncated_share" not in stats


def test_wandb_offline_run_holds_our_metric_keys(micro_pair, tmp_path, monkeypatch):
    """log.report_to: [wandb] with WANDB_MODE=offline writes an offline run under WANDB_DIR whose
    log file holds every metric key of metrics.jsonl and the flattened config."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = micro_config(*micro_pair, tmp_path / "run", log={"report_to": ["wandb"]})
    train(cfg)
    # wandb-core, a separate process, writes the run file after finish() returns; at exit wandb
    # waits for it (an atexit teardown), and here the test does the same.
    import wandb

    wandb.teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log_bytes = next(runs[0].glob("run-*.wandb")).read_bytes()
    keys = {key for row in read_metrics(tmp_path / "run") for key in row if key != "step"}
    assert {"train/entropy", "train/truncated_share", "eval/accuracy", "loss"} <= keys
    # The .wandb file is a log of protobuf records, whose strings are stored as plain UTF-8.
    assert [key for key in sorted(keys) if key.encode() not in log_bytes] == []
    assert b"optim.lr" in log_bytes and b"run" in log_bytes  # the config, and the run's name


def test_quiet_silences_wandb_too(micro_pair, tmp_path):
    """-q leaves stderr to errors: wandb's banner and run summary go too (wandb's own `silent`
    setting); without -q they print. In subprocesses: wandb writes to the process's terminal."""
    cfg = micro_config(*micro_pair, tmp_path / "run", log={"report_to": ["wandb"]})
    config = tmp_path / "cfg.yaml"
    config.write_text(config_to_yaml(cfg))
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("WANDB_SILENT", None)
    stderr = {}
    for flags in (["-q"], []):
        command = [sys.executable, "-m", "foresight", "train", str(config), "--overwrite", *flags]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        stderr[bool(flags)] = done.stderr
    assert "wandb:" not in stderr[True]
    assert "wandb: Run data is saved locally" in stderr[False]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2  # both runs logged


@pytest.mark.parametrize(
    "value, message",
    [
        ("[neptune]", "unknown tracker 'neptune'; use tensorboard, wandb, trackio"),
    ],
)
def test_unknown_tracker_is_refused_in_one_sentence(value, message):
    with pytest.raises(UserError, match=message) as error:
        load_config(None, [f"log.report_to={value}"])
    assert str(error.value).count(".") <= 4 and "\n" not in str(error.value)


def test_tensorboard_in_report_to_is_log_tensorboard():
    """`report_to: [tensorboard, wandb]`, as transformers spells it, turns log.tensorboard on."""
    cfg = load_config(None, ["log.report_to=[tensorboard,wandb]"])
    assert cfg.log.tensorboard is True and cfg.log.report_to == ["wandb"]
    with pytest.raises(UserError, match="log.tensorboard is false"):
        load_config(None, ["log.tensorboard=false", "log.report_to=[tensorboard]"])


def test_tracker_that_is_not_installed_is_refused_before_loading(micro_pair, tmp_path):
    from accelerate.tracking import get_available_trackers

    missing = next(
        name
        for name in ("swanlab", "aim", "dvclive", "clearml", "comet_ml", "mlflow", "trackio")
        if name not in {str(t) for t in get_available_trackers()}
    )
    cfg = micro_config(*micro_pair, tmp_path / "run", log={"report_to": [missing]})
    with pytest.raises(UserError, match=f"names {missing}, whose package is not installed"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_our_tracker_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    from foresight.config_sections import TRACKERS

    assert set(TRACKERS) | {"tensorboard"} == set(LOGGER_TYPE_TO_CLASS)
