"""GRPO pieces against hand-computed values and brute force; a toy policy learns from its reward.

Run: .venv/bin/python -m pytest tests/train/test_grpo.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from foresight.train.loss import clipped_policy, group_advantages, k3_kl, masked_sum_loss

from .reference import kl_np


def test_equal_rewards_in_a_group_give_zero_advantages():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    advantages = group_advantages(rewards, group_size=3)
    assert advantages[:6].abs().max() == 0.0
    # Third group: mean 1/3, population std sqrt(2)/3.
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (math.sqrt(2) / 3 + 1e-6)
    torch.testing.assert_close(advantages[6:], expected)
    assert group_advantages(torch.tensor([1.0, 0.0]), group_size=1).abs().max() == 0.0


def test_clipped_loss_matches_a_hand_computed_example():
    student = torch.log(torch.tensor([[0.5, 0.2, 0.3]], dtype=torch.float64))
    old = torch.log(torch.tensor([[0.25, 0.4, 0.3]], dtype=torch.float64))
    advantages = torch.tensor([[1.0, -1.0, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    loss = masked_sum_loss(
        clipped_policy(student, advantages, clip_eps=0.2, old_logprobs=old), mask, n_tokens=2
    )
    # token 0: r = 2, A = 1 -> min(2, 1.2) = 1.2; token 1: r = 0.5, A = -1 -> min(-0.5, -0.8) = -0.8;
    # token 2 is masked. loss = -(1.2 - 0.8) / 2.
    assert loss.item() == pytest.approx(-0.2, rel=1e-12)


def test_k3_is_an_unbiased_reverse_kl_estimate():
    """E_{y~p_S}[k3(y)] = KL(p_S ‖ p_ref), checked exactly by enumerating y."""
    generator = torch.Generator().manual_seed(0)
    student_logp = torch.log_softmax(torch.randn(9, generator=generator, dtype=torch.float64), -1)
    reference_logp = torch.log_softmax(torch.randn(9, generator=generator, dtype=torch.float64), -1)
    expectation = (student_logp.exp() * k3_kl(student_logp, reference_logp)).sum()
    exact = kl_np(student_logp.exp().numpy(), reference_logp.exp().numpy())
    assert float(expectation) == pytest.approx(exact, rel=1e-10)
    assert (k3_kl(student_logp, reference_logp) >= 0).all()


def test_a_toy_policy_learns_the_rewarded_token():
    """One categorical 'policy'; reward 1 for token 2. GRPO steps must raise p(2) (sign check)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.zeros(5, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    for _ in range(30):
        samples = torch.multinomial(
            torch.softmax(logits.detach(), -1), 16, replacement=True, generator=generator
        )  # one group of 16
        rewards = (samples == 2).float()
        logp = torch.log_softmax(logits, -1)[samples][None]  # (1, 16): one token per completion
        advantages = group_advantages(rewards, 16)[None]
        loss = masked_sum_loss(
            clipped_policy(logp, advantages, clip_eps=0.2), torch.ones_like(logp), 16
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.softmax(logits, -1)[2] > 0.9
