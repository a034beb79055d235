"""`score_tokens` with gradients: the chunked, checkpointed full-vocabulary path against a plainly
written float64 reference over the whole sequence (one model call, one log-softmax per model).

Run: .venv/bin/python -m pytest tests/train/test_scoring.py -q
"""

from __future__ import annotations

import pytest
import torch

from foresight.models import load_model, load_tokenizer
from foresight.train.loss import masked_sum_loss
from foresight.train.rollout import sample
from foresight.train.scoring import score_tokens


def plain_divergence(kind: str, student_logp, teacher_logp, beta: float) -> torch.Tensor:
    """(B, T) from two (B, T, V) float64 log-distributions, written out term by term."""
    p_s, p_t = student_logp.exp(), teacher_logp.exp()
    if kind == "reverse_kl":
        return (p_s * (student_logp - teacher_logp)).sum(-1)
    if kind == "forward_kl":
        return (p_t * (teacher_logp - student_logp)).sum(-1)
    m = beta * p_t + (1 - beta) * p_s
    kl_t = (p_t * (teacher_logp - m.log())).sum(-1)
    kl_s = (p_s * (student_logp - m.log())).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "gjsd"])
def test_full_vocabulary_scores_and_gradient_match_a_float64_reference(micro_pair, kind):
    student = load_model(micro_pair[0], "student").double()
    teacher = load_model(micro_pair[1], "teacher").double().requires_grad_(False)
    tokenizer = load_tokenizer(micro_pair[0], "student")
    prompts = ["1+2=", "45+67+8=", "7=", "12+3="]
    rollout = sample(student, tokenizer, prompts, 8, 1.0, torch.Generator().manual_seed(1))
    mask = rollout.completion_mask[:, 1:].double()  # (B, T-1): position t predicts ids[:, t+1]
    n_tokens = mask.sum()
    beta = 0.3

    # chunk_tokens=2: several checkpointed chunks, recomputed in backward.
    scores = score_tokens(student, rollout, teacher, kind, beta, chunk_tokens=2)
    masked_sum_loss(scores.divergence, mask, n_tokens).backward()
    got = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    inputs = {"attention_mask": rollout.attention_mask, "position_ids": rollout.position_ids}
    student_logp = torch.log_softmax(student(rollout.ids, **inputs).logits[:, :-1], dim=-1)
    with torch.no_grad():
        teacher_logp = torch.log_softmax(teacher(rollout.ids, **inputs).logits[:, :-1], dim=-1)
    reference = plain_divergence(kind, student_logp, teacher_logp, beta)  # (B, T-1)
    (reference * mask).sum().div(n_tokens).backward()

    on = mask.bool()
    torch.testing.assert_close(scores.divergence[on], reference.detach()[on], rtol=0, atol=1e-10)
    next_ids = rollout.ids[:, 1:, None]
    for name, expected in (
        ("student_logprobs", student_logp.detach().gather(-1, next_ids)[..., 0]),
        ("teacher_logprobs", teacher_logp.gather(-1, next_ids)[..., 0]),
    ):
        torch.testing.assert_close(getattr(scores, name)[on], expected[on], rtol=0, atol=1e-10)
    for name, parameter in student.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, rtol=1e-7, atol=1e-12, msg=name)
    assert any(g.abs().sum() > 0 for g in got.values())
