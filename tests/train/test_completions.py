"""Completion sources: SFT on teacher samples is cached and reused on resume, and its masks are
OPD's; GRPO rows come in groups with verifier rewards.

Run: .venv/bin/python -m pytest tests/train/test_completions.py -q
"""

from __future__ import annotations

import json

import torch
from builders import micro_config

from foresight.train import sft_batches
from foresight.train.loop import make_batch, train
from foresight.train.rollout import decode_completions, teacher_forced
from foresight.train.setup import setup


def test_teacher_completions_are_cached_and_reused_on_resume(micro_pair, tmp_path, monkeypatch):
    sft = {"method": "sft", "sft_source": "teacher", "steps": 2}
    train(micro_config(*micro_pair, tmp_path / "run", train=sft))
    cached = (tmp_path / "run" / "teacher_completions.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in cached] == [1, 2]
    calls = []
    real_sample = sft_batches.sample
    monkeypatch.setattr(
        sft_batches, "sample", lambda *a, **k: calls.append(1) or real_sample(*a, **k)
    )
    (tmp_path / "run" / "checkpoints" / "step-000002").rename(
        tmp_path / "run" / "checkpoints" / "x"
    )
    train(micro_config(*micro_pair, tmp_path / "run", train={**sft, "steps": 3}), resume=True)
    assert (
        len(calls) == 1
    )  # step 2 (redone from checkpoint 1) read from the cache; only step 3 sampled
    lines = (tmp_path / "run" / "teacher_completions.jsonl").read_text().splitlines()
    assert lines[:2] == cached and json.loads(lines[2])["step"] == 3


def test_sft_masks_equal_the_masks_of_the_same_tokens_sampled_on_policy(micro_pair, tmp_path):
    trainer = setup(micro_config(*micro_pair, tmp_path / "run"))
    sampled = make_batch(trainer, 1).rollout
    texts = decode_completions(trainer.tokenizer, sampled)
    forced = teacher_forced(trainer.tokenizer, [""] * len(texts), texts)
    eos, compared = trainer.tokenizer.eos_token_id, 0
    for row in range(len(texts)):
        generated = sampled.completion_mask[row, sampled.prompt_width :]  # (G,)
        if bool((sampled.ids[row, sampled.prompt_width :][generated.bool()] == eos).any()):
            # The same tokens plus their EOS are trained, and nothing else.
            assert int(forced.completion_mask[row].sum()) == int(generated.sum())
            compared += 1
    assert compared > 0


def test_rl_rows_are_grouped_by_prompt_with_rewards(micro_pair, tmp_path):
    cfg = micro_config(
        *micro_pair,
        tmp_path / "run",
        train={"method": "rl"},
        rollout={"group_size": 4, "prompts_per_step": 3},
        model={"teacher": None},
    )
    trainer = setup(cfg)
    batch = make_batch(trainer, 1)
    assert batch.rollout.ids.shape[0] == 12 and batch.rewards.shape == (12,)
    prompts = batch.rollout.ids[:, : batch.rollout.prompt_width]
    for group in range(3):
        assert torch.equal(prompts[4 * group], prompts[4 * group + 3])


def test_a_teacher_sample_cut_off_at_the_length_cap_gets_no_eos(micro_pair):
    from foresight.models import load_tokenizer

    tokenizer = load_tokenizer(micro_pair[0], "student")
    rollout = teacher_forced(tokenizer, ["1+2=", "3="], ["1+2=3#3", "4+4=8"], ended=[True, False])
    eos = tokenizer.eos_token_id
    trained = [ids[m.bool()].tolist() for ids, m in zip(rollout.ids, rollout.completion_mask)]
    assert trained[0][-1] == eos and eos not in trained[1]
    assert len(trained[1]) == len("4+4=8")
