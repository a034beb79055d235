"""Losses against brute-force float64 references: the full-vocabulary divergences, the sampled-token
loss's gradient, and every (method, loss kind) pair of `OBJECTIVES`, value and gradient.

Run: .venv/bin/python -m pytest tests/train/test_loss.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foresight.config_sections import FULL_VOCABULARY_KINDS, LOSS_KINDS, LossConfig
from foresight.train.loss import (
    OBJECTIVES,
    Scores,
    divergence,
    masked_sum_loss,
    sampled_rkl,
)

from .reference import (
    brute_force,
    divergence_np,
    forward_kl,
    generalized_jsd,
    jsd_np,
    kl_np,
    reverse_kl,
    softmax_np,
)

SHAPES = [(1, 1, 2), (2, 3, 5), (3, 7, 11), (4, 1, 64)]


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


def test_divergence_refuses_a_kind_that_is_not_full_vocabulary():
    student = torch.zeros(1, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not a full-vocabulary divergence"):
        divergence("sampled_rkl", student, student, 0.5)


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


def test_sampled_rkl_has_the_exact_reverse_kl_gradient_in_expectation():
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
        return masked_sum_loss(sampled_rkl(s, t, clip_eps=0.2), mask, 1)

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
    exact = kl_np(student_logp.exp().numpy(), teacher_logp.exp().numpy())
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - exact) < 4 * standard_error
    assert standard_error < 0.01 * exact  # the tolerance is tight enough to mean something


def test_sampled_rkl_clip_matches_hand_computed_values():
    student_logp = torch.tensor([[math.log(0.5), math.log(0.3)]], dtype=torch.float64)
    old_logp = torch.tensor([[math.log(0.25), math.log(0.3)]], dtype=torch.float64)
    teacher_logp = torch.tensor([[math.log(0.5), math.log(0.1)]], dtype=torch.float64)
    per_token = sampled_rkl(student_logp, teacher_logp, clip_eps=0.2, old_logprobs=old_logp)
    # token 0: ratio 2, A = log 2 > 0 -> min(2A, 1.2A) = 1.2 log 2; token 1: ratio 1, A = log(1/3).
    assert per_token.shape == (1, 2)
    assert per_token[0, 0].item() == pytest.approx(-1.2 * math.log(2), rel=1e-12)
    assert per_token[0, 1].item() == pytest.approx(-math.log(1 / 3), rel=1e-12)
    loss = masked_sum_loss(per_token, torch.ones(1, 2, dtype=torch.float64), 2)
    assert loss.item() == pytest.approx(-(1.2 * math.log(2) + math.log(1 / 3)) / 2, rel=1e-12)


# -- OBJECTIVES: the (method, kind) map ---------------------------------------------------------
def test_objectives_and_config_list_the_same_method_kind_pairs():
    """config.LOSS_KINDS (what validation accepts) and loss.OBJECTIVES (what the loop can run)
    name exactly the same pairs, and exactly the full-vocabulary kinds ask scoring for a divergence."""
    accepted = {(method, kind) for method, kinds in LOSS_KINDS.items() for kind in kinds}
    assert accepted == set(OBJECTIVES)
    for (method, kind), objective in OBJECTIVES.items():
        full = kind in FULL_VOCABULARY_KINDS
        assert objective.divergence == (kind if full else None), (method, kind)
    # The frozen model is scored for opd (teacher) and rl (reference, when kl_coef > 0), not sft.
    assert {pair: o.scores_frozen for pair, o in OBJECTIVES.items()} == {
        pair: pair[0] != "sft" for pair in OBJECTIVES
    }


# One position per token of a small vocabulary, in float64: logits (N, V) and a sampled id per row.
N_ROWS, VOCAB = 6, 5


def sampled_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits (1, N, V), frozen-model logits (1, N, V) and the sampled ids (1, N)."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(1, N_ROWS, VOCAB, generator=generator, dtype=torch.float64) * 2
    frozen = torch.randn(1, N_ROWS, VOCAB, generator=generator, dtype=torch.float64) * 2
    ids = torch.randint(0, VOCAB, (1, N_ROWS), generator=generator)
    return student, frozen, ids


def logp_np(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token], by its definition."""
    return float(logits[token] - math.log(sum(math.exp(x) for x in logits)))


def grad_logp_np(logits: np.ndarray, token: int) -> np.ndarray:
    """∇_logits log p(token) = onehot(token) - softmax(logits)."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    onehot = np.zeros_like(probs)
    onehot[token] = 1.0
    return onehot - probs


def objective_value_and_grad(
    method: str,
    kind: str,
    cfg: LossConfig,
    student: torch.Tensor,
    frozen: torch.Tensor | None,
    ids: torch.Tensor,
    advantages: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """OBJECTIVES[(method, kind)]'s per-token loss (N,) and the gradient of its sum w.r.t. the
    student's logits (N, V), from the Scores the loop would build."""
    leaf = student.clone().requires_grad_(True)
    student_logp = torch.log_softmax(leaf, -1).gather(-1, ids[..., None])[..., 0]  # (1, N)
    frozen_logp = None
    if frozen is not None:
        frozen_logp = torch.log_softmax(frozen, -1).gather(-1, ids[..., None])[..., 0]
    objective = OBJECTIVES[(method, kind)]
    per_token_divergence = None
    if objective.divergence is not None:
        per_token_divergence = divergence(objective.divergence, leaf, frozen, cfg.beta)
    scores = Scores(student_logp, frozen_logp, per_token_divergence, advantages)
    per_token = objective.per_token(scores, cfg)  # (1, N)
    assert per_token.shape == (1, N_ROWS)
    per_token.sum().backward()
    return per_token.detach()[0].numpy(), leaf.grad[0].numpy()


def test_sampled_rkl_objective_is_the_log_ratio_with_the_score_function_gradient():
    """opd/sampled_rkl: per token log p_S(y) - log p_T(y) (r ≡ 1: the clip is inactive), and its
    gradient (log p_S(y) - log p_T(y)) · ∇ log p_S(y), the REINFORCE estimate of ∇ KL(p_S ‖ p_T)."""
    student, teacher, ids = sampled_case(0)
    value, grad = objective_value_and_grad(
        "opd", "sampled_rkl", LossConfig(kind="sampled_rkl"), student, teacher, ids
    )
    for n in range(N_ROWS):
        s_row, t_row, y = student[0, n].numpy(), teacher[0, n].numpy(), int(ids[0, n])
        log_ratio = logp_np(s_row, y) - logp_np(t_row, y)
        assert value[n] == pytest.approx(log_ratio, rel=1e-12, abs=1e-14)
        np.testing.assert_allclose(
            grad[n], log_ratio * grad_logp_np(s_row, y), rtol=1e-10, atol=1e-14
        )
    assert np.abs(grad).max() > 1e-2  # a gradient that is not trivially zero


@pytest.mark.parametrize("kind", FULL_VOCABULARY_KINDS)
def test_full_vocabulary_objectives_are_the_divergence_per_position(kind):
    student, teacher, ids = sampled_case(1)
    """opd/<divergence>: per position the divergence of the two softmaxes, its gradient against
    central finite differences of the brute-force value (float64, step 1e-5: error ~1e-10)."""
    cfg = LossConfig(kind=kind, beta=0.3)
    value, grad = objective_value_and_grad("opd", kind, cfg, student, teacher, ids)

    def brute(n: int, student_row: np.ndarray) -> float:
        return divergence_np(
            kind, cfg.beta, softmax_np(student_row), softmax_np(teacher[0, n].numpy())
        )

    expected = [brute(n, student[0, n].numpy()) for n in range(N_ROWS)]
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    step = 1e-5
    for n in range(N_ROWS):
        for v in range(VOCAB):
            up, down = student[0, n].numpy().copy(), student[0, n].numpy().copy()
            up[v] += step
            down[v] -= step
            numeric = (brute(n, up) - brute(n, down)) / (2 * step)
            assert grad[n, v] == pytest.approx(numeric, abs=1e-8), (n, v)
    assert np.abs(grad).max() > 1e-2


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_grpo_objective_is_clipped_policy_plus_k3_penalty(kl_coef):
    """rl/grpo at r ≡ 1: per token -A + kl_coef · (e^{log p_ref - log p_S} - (log p_ref - log p_S)
    - 1), with gradient (-A + kl_coef · (1 - e^{log p_ref - log p_S})) · ∇ log p_S. Without a
    reference (kl_coef = 0: none is loaded) the penalty is absent."""
    student, reference, ids = sampled_case(2)
    advantages = torch.tensor([[1.5, -0.5, 0.0, 2.0, -1.0, 0.25]], dtype=torch.float64)  # (1, N)
    cfg = LossConfig(kind="grpo", kl_coef=kl_coef)
    value, grad = objective_value_and_grad(
        "rl", "grpo", cfg, student, reference if kl_coef else None, ids, advantages
    )
    for n in range(N_ROWS):
        s_row, r_row, y = student[0, n].numpy(), reference[0, n].numpy(), int(ids[0, n])
        a = float(advantages[0, n])
        s_logp = logp_np(s_row, y)
        expected, d_logp = -a, -a
        if kl_coef:
            log_ratio = logp_np(r_row, y) - s_logp
            expected += kl_coef * (math.exp(log_ratio) - log_ratio - 1.0)
            d_logp += kl_coef * (1.0 - math.exp(log_ratio))
        assert value[n] == pytest.approx(expected, rel=1e-12, abs=1e-14)
        np.testing.assert_allclose(grad[n], d_logp * grad_logp_np(s_row, y), rtol=1e-10, atol=1e-14)
    assert np.abs(grad).max() > 1e-2


def test_cross_entropy_objective_is_minus_log_p():
    """sft/cross_entropy: per token -log p_S(y), gradient softmax - onehot(y)."""
    student, _, ids = sampled_case(3)
    value, grad = objective_value_and_grad(
        "sft", "cross_entropy", LossConfig(kind="cross_entropy"), student, None, ids
    )
    for n in range(N_ROWS):
        s_row, y = student[0, n].numpy(), int(ids[0, n])
        assert value[n] == pytest.approx(-logp_np(s_row, y), rel=1e-12)
        np.testing.assert_allclose(grad[n], -grad_logp_np(s_row, y), rtol=1e-10, atol=1e-14)
