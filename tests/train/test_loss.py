"""Losses against brute-force float64 references.

Run: .venv/bin/python -m pytest tests/opd/test_loss.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foresight.train.loss import (
    divergence,
    forward_kl,
    generalized_jsd,
    masked_sum_loss,
    reverse_kl,
    sampled_token_loss,
)

SHAPES = [(1, 1, 2), (2, 3, 5), (3, 7, 11), (4, 1, 64)]


def softmax_np(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def brute_force(student: np.ndarray, teacher: np.ndarray, fn) -> np.ndarray:
    """Loop over every (b, t) position and apply fn(p_S, p_T) to explicit probability vectors."""
    out = np.zeros(student.shape[:2])
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            out[b, t] = fn(softmax_np(student[b, t]), softmax_np(teacher[b, t]))
    return out


def kl_np(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))


def jsd_np(p_s: np.ndarray, p_t: np.ndarray, beta: float) -> float:
    m = beta * p_t + (1 - beta) * p_s
    return beta * kl_np(p_t, m) + (1 - beta) * kl_np(p_s, m)


@pytest.fixture(params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def logits(request) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(hash(request.param) % 1000)
    student = torch.randn(request.param, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(request.param, generator=generator, dtype=torch.float64) * 3
    return student, teacher


def test_reverse_kl_matches_reference(logits):
    student, teacher = logits
    expected = brute_force(student.numpy(), teacher.numpy(), kl_np)
    np.testing.assert_allclose(
        reverse_kl(student, teacher).numpy(), expected, rtol=1e-10, atol=1e-12
    )


def test_forward_kl_matches_reference(logits):
    student, teacher = logits
    expected = brute_force(student.numpy(), teacher.numpy(), lambda p_s, p_t: kl_np(p_t, p_s))
    np.testing.assert_allclose(
        forward_kl(student, teacher).numpy(), expected, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_gjsd_matches_reference(logits, beta):
    student, teacher = logits
    expected = brute_force(
        student.numpy(), teacher.numpy(), lambda p_s, p_t: jsd_np(p_s, p_t, beta)
    )
    got = generalized_jsd(student, teacher, beta).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_gjsd_endpoints_are_the_kls(logits):
    student, teacher = logits
    torch.testing.assert_close(generalized_jsd(student, teacher, 0.0), forward_kl(student, teacher))
    torch.testing.assert_close(generalized_jsd(student, teacher, 1.0), reverse_kl(student, teacher))
    torch.testing.assert_close(
        divergence("gjsd", student, teacher, 0.3), generalized_jsd(student, teacher, 0.3)
    )


def test_bfloat16_logits_are_upcast():
    student = torch.randn(2, 3, 17, dtype=torch.float64)
    teacher = torch.randn(2, 3, 17, dtype=torch.float64)
    low = reverse_kl(student.bfloat16(), teacher.bfloat16())
    assert low.dtype == torch.float32
    exact = reverse_kl(student.bfloat16().double(), teacher.bfloat16().double())
    torch.testing.assert_close(low.double(), exact, rtol=1e-5, atol=1e-6)


def test_masked_sum_handles_all_masked_row_and_length_one():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [5.0, 7.0, 11.0]], dtype=torch.float64)
    mask = torch.tensor(
        [[0, 0, 0], [0, 1, 0]], dtype=torch.float64
    )  # row 0 all masked, row 1 length 1
    assert masked_sum_loss(per_token, mask, n_tokens=1).item() == 7.0


def exact_expected_gradient(
    surrogate, logits: torch.Tensor, teacher_logp: torch.Tensor
) -> torch.Tensor:
    """E_{y~p_S}[∇ surrogate(y)] by enumerating every token y of one position (V small)."""
    total = torch.zeros_like(logits)
    probs = torch.softmax(logits, -1).detach()
    for y in range(logits.shape[-1]):
        leaf = logits.detach().clone().requires_grad_(True)
        student_logp = torch.log_softmax(leaf, -1)[y].reshape(1, 1)
        surrogate(student_logp, teacher_logp[y].reshape(1, 1)).backward()
        total += probs[y] * leaf.grad
    return total


def test_sampled_token_loss_has_the_exact_reverse_kl_gradient_in_expectation():
    """The score-function form's expected gradient equals ∇ KL(p_S ‖ p_T); the raw log-ratio's is 0."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, generator=generator, dtype=torch.float64)
    teacher_logp = torch.log_softmax(torch.randn(7, generator=generator, dtype=torch.float64), -1)
    leaf = logits.clone().requires_grad_(True)
    reverse_kl(
        leaf[None, None], teacher_logp[None, None]
    ).sum().backward()  # log_softmax is idempotent
    mask = torch.ones(1, 1, dtype=torch.float64)

    def score_function(s, t):
        return sampled_token_loss(s, t, mask, 1, clip_eps=0.2)

    def raw_log_ratio(s, t):
        return (s - t).sum()

    torch.testing.assert_close(
        exact_expected_gradient(score_function, logits, teacher_logp), leaf.grad
    )
    torch.testing.assert_close(
        exact_expected_gradient(raw_log_ratio, logits, teacher_logp),
        torch.zeros_like(logits),
        atol=1e-12,
        rtol=0,
    )


def test_sampled_estimator_mean_equals_exact_reverse_kl():
    """Monte-Carlo mean of log p_S(y) - log p_T(y), y ~ p_S, is within 4 standard errors of the KL."""
    generator = torch.Generator().manual_seed(1)
    student_logp = torch.log_softmax(
        torch.randn(11, generator=generator, dtype=torch.float64) * 2, -1
    )
    teacher_logp = torch.log_softmax(
        torch.randn(11, generator=generator, dtype=torch.float64) * 2, -1
    )
    samples = torch.multinomial(student_logp.exp(), 200_000, replacement=True, generator=generator)
    estimates = (student_logp - teacher_logp)[samples]
    exact = float(reverse_kl(student_logp[None, None], teacher_logp[None, None]))
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - exact) < 4 * standard_error
    assert standard_error < 0.01 * exact  # the tolerance is tight enough to mean something


def test_sampled_token_loss_clip_matches_hand_computed_values():
    student_logp = torch.tensor([[math.log(0.5), math.log(0.3)]], dtype=torch.float64)
    old_logp = torch.tensor([[math.log(0.25), math.log(0.3)]], dtype=torch.float64)
    teacher_logp = torch.tensor([[math.log(0.5), math.log(0.1)]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss = sampled_token_loss(
        student_logp, teacher_logp, mask, 2, clip_eps=0.2, old_logprobs=old_logp
    )
    # token 0: ratio 2, A = log 2 > 0 -> min(2A, 1.2A) = 1.2 log 2; token 1: ratio 1, A = log(1/3).
    expected = -(1.2 * math.log(2) + math.log(1 / 3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
