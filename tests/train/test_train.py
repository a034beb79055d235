"""The training step: parameters move, accumulation does not change the update, pinned first losses.

Run: .venv/bin/python -m pytest tests/train/test_train.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from builders import micro_config

from foresight.train.loop import make_batch, micro_batch_loss, train_step
from foresight.train.setup import setup
from foresight.train.sft_batches import TeacherCompletions


@pytest.mark.parametrize("kind", ["sampled_rkl", "reverse_kl", "forward_kl", "gjsd"])
def test_two_steps_move_every_parameter(micro_pair, tmp_path, kind):
    cfg = micro_config(*micro_pair, tmp_path / "run", loss={"kind": kind})
    trainer = setup(cfg)
    before = {name: p.detach().clone() for name, p in trainer.student.named_parameters()}
    for step in (1, 2):
        stats = train_step(trainer, step)
        assert math.isfinite(stats["loss"]) and stats["kl/mean"] != 0.0
    for name, param in trainer.student.named_parameters():
        assert not torch.equal(before[name], param), f"{name} did not move"


@pytest.mark.parametrize("kind", ["sampled_rkl", "reverse_kl"])
def test_gradient_accumulation_does_not_change_the_gradient(micro_pair, tmp_path, kind):
    """One micro-batch or four: the same accumulated gradient (the loss divides by the step's tokens)."""
    trainer = setup(micro_config(*micro_pair, tmp_path / "run", loss={"kind": kind}))
    batch = make_batch(trainer, 1)
    rollout = batch.rollout
    n_tokens = rollout.completion_mask[:, 1:].sum()
    gradients, losses = [], []
    for parts in (1, 4):
        trainer.student.zero_grad(set_to_none=True)
        total = 0.0
        for rows in torch.arange(rollout.ids.shape[0]).tensor_split(parts):
            part = slice(int(rows[0]), int(rows[-1]) + 1)
            loss, *_ = micro_batch_loss(trainer, batch, part, None, None, n_tokens)
            loss.backward()
            total += loss.item()
        losses.append(total)
        gradients.append([p.grad.clone() for p in trainer.student.parameters()])
    # The two splits add the same per-token terms in another order (and run the matmuls on other
    # batch shapes): a float32 sum of n terms moves by at most ~n·u relative to the sum of their
    # magnitudes, taken here as each tensor's largest entry; n = the step's completion tokens.
    rtol = float(n_tokens) * 2.0**-24
    assert losses[0] == pytest.approx(losses[1], rel=rtol)
    for one, four in zip(*gradients):
        assert float((one - four).abs().max()) <= rtol * float(one.abs().max())


def test_first_losses_are_pinned(micro_pair, tmp_path):
    """Expected-loss regression test: seed 0, micro models, 2 steps of sampled-token OPD.

    One thread (train.threads), so the outer OMP_NUM_THREADS changes nothing. Another machine's
    kernels round differently: the per-token log-probs by a few u (~1e-7 relative), the step-2
    weights also by AdamW's amplified sign flips at the few entries whose gradient is within
    rounding of 0 (see test_distributed), which moved later losses by ~1e-7 there. rel=1e-4 leaves
    three orders of magnitude for that and still fails on any change of the samples (a token more
    or less moves the mean by ~1/n_tokens ~ 1e-2) or of the loss.
    """
    trainer = setup(micro_config(*micro_pair, tmp_path / "run", train={"threads": 1}))
    losses = [train_step(trainer, step)["kl/mean"] for step in (1, 2)]
    assert losses == pytest.approx(PINNED_KL, rel=1e-4)


PINNED_KL = [4.1788787841796875, 3.7988069595829135]


@pytest.mark.parametrize(
    "sections",
    [
        {"loss": {"kind": "sampled_rkl"}},
        {"loss": {"kind": "reverse_kl", "teacher_topk": 4}},
        {"loss": {"kind": "forward_kl"}},
        {"train": {"method": "sft", "sft_source": "teacher"}},
    ],
)
def test_student_bfloat16_autocast_leaves_a_float32_teacher_in_float32(
    micro_pair, tmp_path, sections
):
    # model.dtype=bfloat16 autocasts the student's step; the teacher computes in teacher_dtype.
    cfg = micro_config(
        *micro_pair,
        tmp_path / "run",
        model={"dtype": "bfloat16", "teacher_dtype": "float32"},
        **sections,
    )
    (tmp_path / "run").mkdir()  # sft from teacher samples caches them in the run folder
    trainer = setup(cfg)
    if cfg.train.method == "sft":  # train() sets the cache once the run folder exists
        trainer.teacher_cache = TeacherCompletions(tmp_path / "run")
    teacher_dtypes, student_dtypes = set(), set()
    head = trainer.teacher.get_output_embeddings()
    for module, seen in ((trainer.teacher.model.layers[0].mlp.down_proj, teacher_dtypes), (head, teacher_dtypes), (trainer.student.model.layers[0].mlp.down_proj, student_dtypes)):  # fmt: skip
        module.register_forward_hook(lambda m, i, out, seen=seen: seen.add(out.dtype))
    # Sampling runs the models' own forward too, so the hooks see every pass: the student's
    # samples, the teacher's (sft from teacher) and both models' scoring.
    train_step(trainer, 1)
    assert teacher_dtypes == {torch.float32}
    assert student_dtypes == {torch.bfloat16}
