"""Top-k + tail-bucket divergences against brute-force float64 references, their gradients, the
gather-before-upcast log-probs, and the option end to end through `score_tokens` and the config.

Run: .venv/bin/python -m pytest tests/train/test_topk.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foresight.config import Config, load_config
from foresight.errors import UserError
from foresight.train.loss import divergence, selected_logprobs, teacher_topk
from foresight.train.rollout import teacher_forced
from foresight.train.scoring import sampled_logprobs, score_tokens

from .reference import divergence_np, kl_np, softmax_np, topk_divergence

KINDS = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("gjsd", 0.3), ("gjsd", 0.0), ("gjsd", 1.0)]


def buckets_np(p: np.ndarray, ids: list[int]) -> np.ndarray:
    """The (k+1)-bucket distribution, built by hand: the k listed tokens, then everything else."""
    rest = [v for v in range(len(p)) if v not in ids]
    return np.array([p[v] for v in ids] + [sum(p[v] for v in rest)])


def reference(kind, beta, student: np.ndarray, teacher: np.ndarray, k: int) -> np.ndarray:
    """Loop over positions; the teacher's top-k ids by a full sort; the divergence by definition."""
    out = np.zeros(student.shape[:2])
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            p_s, p_t = softmax_np(student[b, t]), softmax_np(teacher[b, t])
            ids = list(np.argsort(-p_t, kind="stable")[:k])
            out[b, t] = divergence_np(kind, beta, buckets_np(p_s, ids), buckets_np(p_t, ids))
    return out


def random_logits(shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    return student, teacher


def topk_value(kind, beta, student, teacher, k):
    ids, teacher_buckets = teacher_topk(teacher, k)
    return topk_divergence(kind, student, ids, teacher_buckets, beta)


@pytest.mark.parametrize(("kind", "beta"), KINDS)
def test_k_equal_to_vocabulary_is_the_full_divergence(kind, beta):
    student, teacher = random_logits((3, 4, 11), 0)
    full = divergence(kind, student, teacher, beta)
    np.testing.assert_allclose(topk_value(kind, beta, student, teacher, 11), full, atol=1e-12)
    # k > V is clamped to V rather than failing.
    np.testing.assert_allclose(topk_value(kind, beta, student, teacher, 50), full, atol=1e-12)


@pytest.mark.parametrize(("kind", "beta"), KINDS)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_small_k_matches_a_hand_built_bucket_reference(kind, beta, k):
    student, teacher = random_logits((2, 5, 13), k)
    expected = reference(kind, beta, student.numpy(), teacher.numpy(), k)
    got = topk_value(kind, beta, student, teacher, k)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    # Coarsening cannot increase an f-divergence (data processing): a lower bound of the full one.
    assert bool((got <= divergence(kind, student, teacher, beta) + 1e-12).all())


def test_tail_without_mass_gives_finite_values_and_gradients():
    # The teacher's top 2 hold all the float64 mass: the tail log-mass would be log(0).
    teacher = torch.tensor([[[0.0, 0.0, -1e4, -1e4]]], dtype=torch.float64)
    student = torch.tensor([[[1.0, 0.5, -1e4, -1e4]]], dtype=torch.float64, requires_grad=True)
    value = topk_value("reverse_kl", 0.5, student, teacher, 2)
    value.sum().backward()
    expected = kl_np(softmax_np(np.array([1.0, 0.5])), np.array([0.5, 0.5]))
    assert value.item() == pytest.approx(expected, abs=1e-15)
    assert bool(torch.isfinite(student.grad).all())


@pytest.mark.parametrize(("kind", "beta"), KINDS)
def test_gradient_matches_an_autograd_reference(kind, beta):
    """The student's gradient through the buckets equals that of a plainly written float64 version
    (softmax, sum the tail, then the divergence), and is non-zero."""
    student, teacher = random_logits((2, 3, 9), 7)
    k = 4
    student.requires_grad_(True)
    topk_value(kind, beta, student, teacher, k).sum().backward()
    got = student.grad.clone()
    student.grad = None
    ids = teacher.topk(k, dim=-1).indices  # (B, T, k)

    def plain_buckets(logits):
        probs = logits.softmax(-1)
        top = probs.gather(-1, ids)
        return torch.cat([top, 1 - top.sum(-1, keepdim=True)], dim=-1)

    p_s, p_t = plain_buckets(student), plain_buckets(teacher)
    m = beta * p_t + (1 - beta) * p_s
    plain = {
        "reverse_kl": (p_s * (p_s.log() - p_t.log())).sum(-1),
        "forward_kl": (p_t * (p_t.log() - p_s.log())).sum(-1),
        "gjsd": (beta * p_t * (p_t.log() - m.log()) + (1 - beta) * p_s * (p_s.log() - m.log())).sum(
            -1
        ),
    }[kind]
    if kind == "gjsd" and beta in (0.0, 1.0):  # the degenerate ends are forward / reverse KL
        plain = divergence("forward_kl" if beta == 0 else "reverse_kl", p_s.log(), p_t.log(), 0.5)
    plain.sum().backward()
    assert got.abs().max() > 1e-3
    np.testing.assert_allclose(got.numpy(), student.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_sampled_logprobs_gather_bfloat16_logits_before_the_upcast():
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 5, 300, generator=generator) * 4).bfloat16()
    ids = torch.randint(0, 300, (2, 5), generator=generator)
    got = sampled_logprobs(logits, ids)
    expected = torch.log_softmax(logits.double(), -1).gather(-1, ids[..., None])[..., 0]
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-5)


@pytest.fixture(scope="module")
def micro_models(micro_pair):
    from foresight.models import load_model, load_tokenizer

    student_dir, teacher_dir = micro_pair
    tokenizer = load_tokenizer(student_dir, "student")
    return load_model(student_dir, "student"), load_model(teacher_dir, "teacher"), tokenizer


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "gjsd"])
def test_score_tokens_with_full_k_equals_the_full_vocabulary_and_small_k_is_below(
    micro_models, kind
):
    student, teacher, tokenizer = micro_models
    rollout = teacher_forced(tokenizer, ["12+3=", "4+4="], ["15#15", "8#8"])
    vocab = student.config.vocab_size
    scores = {
        k: score_tokens(student, rollout, teacher, kind, chunk_tokens=3, teacher_topk=k)
        for k in (None, vocab, 2)
    }
    mask = rollout.completion_mask[:, 1:].bool()
    full, same, small = (scores[k].divergence[mask].detach() for k in (None, vocab, 2))
    np.testing.assert_allclose(same.numpy(), full.numpy(), rtol=1e-4, atol=1e-6)
    assert bool((small <= full + 1e-5).all()) and float(full.mean()) > 0.1
    np.testing.assert_allclose(
        scores[2].student_logprobs.detach().numpy(), scores[None].student_logprobs.detach().numpy()
    )


def test_config_refuses_topk_for_the_sampled_token_loss():
    with pytest.raises(UserError, match="teacher_topk applies only to"):
        load_config(None, ["loss.kind=sampled_rkl", "loss.teacher_topk=8"])
    assert load_config(None, ["loss.kind=gjsd", "loss.teacher_topk=8"]).loss.teacher_topk == 8
    assert Config().loss.teacher_topk is None


def test_selected_logprobs_matches_log_softmax_and_its_gradient():
    """The one-tensor backward of `selected_logprobs` against torch's own, in float64 (gradcheck
    compares it with finite differences too), ids repeated across positions included."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (2, 3, 4), generator=generator)
    ids[0, 0] = torch.tensor([1, 1, 2, 6])  # a repeated id must get both gradients
    expected = torch.log_softmax(logits, -1).gather(-1, ids)
    np.testing.assert_allclose(
        selected_logprobs(logits, ids).detach().numpy(), expected.detach().numpy(), atol=1e-14
    )
    weights = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad((selected_logprobs(logits, ids) * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), atol=1e-14)
    assert torch.autograd.gradcheck(selected_logprobs, (logits, ids))


def test_tail_gradient_is_finite_when_the_top_k_mass_rounds_to_one_in_float32():
    # log_mass in [-3e-8, -1e-20]: e^x rounds to 1 in float32, where the far branch's backward
    # divides 0 by 0; the gradient must still be finite and equal the float64 one.
    from foresight.train.loss import log1mexp

    x = torch.tensor([-1e-20, -1e-9, -1e-8, -3e-8, -1e-7, -0.5, -2.0], requires_grad=True)
    log1mexp(x).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    torch.log(-torch.expm1(x64)).clamp(min=-46.0).sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=0.0)
