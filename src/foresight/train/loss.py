"""The losses of every method, as pure tensor functions, and `OBJECTIVES`: the one map from
(train.method, loss.kind) to what scoring computes and which per-token loss it feeds.

Conventions: `*_logprobs` are per-token log-probs of the sampled next tokens, shape (B, T);
`*_logits` are (B, T, V); `mask` is (B, T) with 1 on completion tokens that are trained. A per-token
loss is reduced by `masked_sum_loss`: a *sum* over masked tokens divided by `n_tokens`, the number of
completion tokens in the whole optimizer step, so splitting a step into micro-batches changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from foresight.config_sections import LossConfig


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over V in at least float32 (bfloat16 logits lose the tail mass otherwise)."""
    return F.log_softmax(at_least_float32(logits), dim=-1)


def sampled_rkl(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    clip_eps: float,
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled-token reverse KL as a per-token advantage, PPO-clipped (paper §2, verl's OPD). (B, T).

    A_t = log p_T(y_t) - log p_old(y_t), detached; r_t = exp(log p_S(y_t) - log p_old(y_t));
    per-token loss = -min(r_t A_t, clip(r_t, 1-ε, 1+ε) A_t).

    This is the score-function (REINFORCE) form: its gradient is E_y~p_S[(log p_S - log p_T) ∇ log p_S],
    the exact gradient of KL(p_S ‖ p_T). Backpropagating the raw log-ratio instead would give
    E[∇ log p_S] = 0 in expectation. With one update per rollout, `old_logprobs` defaults to the
    detached current log-probs, so r_t ≡ 1 and the clip is inactive, as in the paper's code.
    """
    old = student_logprobs.detach() if old_logprobs is None else old_logprobs
    advantages = (teacher_logprobs - old).detach()  # (B, T)
    return clipped_policy(student_logprobs, advantages, clip_eps, old)


def clipped_policy(
    student_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO-clip policy-gradient loss per token (B, T).

    r_t = exp(log p_S(y_t) - log p_old(y_t));  per-token loss = -min(r_t A_t, clip(r_t, 1±ε) A_t).
    `advantages` (B, T) are constants; `old_logprobs` default to the detached current ones.
    """
    old = student_logprobs.detach() if old_logprobs is None else old_logprobs
    advantages = advantages.detach()
    ratio = torch.exp(student_logprobs - old)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -torch.minimum(ratio * advantages, clipped * advantages)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-normalized advantages (Shao et al. 2024): (r - mean_group) / (std_group + eps).

    rewards (B·G,) are ordered group by group. A group whose rewards are all equal gets exactly 0:
    it carries no signal about which completion is better.
    """
    grouped = rewards.reshape(-1, group_size).double()  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    std = (
        grouped.std(dim=1, keepdim=True, unbiased=False)
        if group_size > 1
        else torch.ones_like(centred)
    )
    return (centred / (std + eps)).reshape(-1).to(rewards.dtype)


def k3_kl(student_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(p_S ‖ p_ref) on sampled tokens (Schulman 2020), as in GRPO:
    exp(log p_ref - log p_S) - (log p_ref - log p_S) - 1 >= 0, backpropagated directly. (B, T)."""
    log_ratio = reference_logprobs - student_logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def reverse_kl_of_logprobs(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Σ_b p_S(b) (log p_S(b) - log p_T(b)) over the last axis (tokens or top-k buckets)."""
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)


def forward_kl_of_logprobs(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Σ_b p_T(b) (log p_T(b) - log p_S(b)) over the last axis (tokens or top-k buckets)."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


def gjsd_of_logprobs(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float
) -> torch.Tensor:
    """GJSD_β over the last axis of two log-distributions (see `generalized_jsd`)."""
    if beta == 0.0:
        return forward_kl_of_logprobs(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl_of_logprobs(student_logp, teacher_logp)
    mixture_logp = torch.logsumexp(
        torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0
    )
    kl_teacher = (teacher_logp.exp() * (teacher_logp - mixture_logp)).sum(-1)
    kl_student = (student_logp.exp() * (student_logp - mixture_logp)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


# The tail bucket's log-mass is floored here: when the top k hold (almost) all the mass, log(0)
# would give 0 · (-inf) = nan, in the value and in the gradient. e^-46 ~ 1e-20 contributes ~1e-18.
TAIL_FLOOR = -46.0


def log1mexp(log_mass: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate at both ends (Mächler 2012), floored at TAIL_FLOOR."""
    x = log_mass.clamp(max=-1e-20)  # x = 0 (all mass in the top k) has no finite log(1 - e^x)
    near_zero = x > -math.log(2.0)
    # Each branch sees only its own inputs: torch.where's backward sends 0 to the unused branch,
    # and log1p's 0 / (1 - e^x) is nan where e^x rounds to 1 (|x| < ~3e-8 in float32).
    near = torch.log(-torch.expm1(torch.where(near_zero, x, -1.0)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x)))
    return torch.where(near_zero, near, far).clamp(min=TAIL_FLOOR)


def token_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """log Σ_v e^logit over V in at least float32 (B, C, 1): the normalizer of a log-softmax."""
    return torch.logsumexp(at_least_float32(logits), dim=-1, keepdim=True)


class _SelectedLogprobs(torch.autograd.Function):
    """log p(ids) = logit[ids] - logsumexp(logits) (B, C, m), for m ids per position.

    Autograd through gather and logsumexp keeps several (B, C, V) tensors alive in backward (one per
    op and per use of the logits); this backward makes one: ∂/∂logit_v = 1[v ∈ ids]·g - p_v·Σ_m g.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logsumexp = token_logsumexp(logits)  # (B, C, 1)
        ctx.save_for_backward(logits, ids, logsumexp)
        return at_least_float32(logits.gather(-1, ids)) - logsumexp  # gathered, then upcast

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, ids, logsumexp = ctx.saved_tensors
        grad_logits = (at_least_float32(logits) - logsumexp).exp_()  # p (B, C, V), the one tensor
        grad_logits.mul_(-grad.sum(-1, keepdim=True))
        grad_logits.scatter_add_(-1, ids, grad.to(grad_logits.dtype))
        return grad_logits.to(logits.dtype), None


def selected_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probs (B, C, m) of the token ids (B, C, m) under logits (B, C, V), in at least float32:
    the ids' logits are gathered in their own dtype before the upcast, and backward stores one
    (B, C, V) tensor (see `_SelectedLogprobs`)."""
    return _SelectedLogprobs.apply(logits, ids)


def buckets_from_top(top_logp: torch.Tensor) -> torch.Tensor:
    """(B, C, k) log-probs of k tokens -> (B, C, k+1): those k, then one tail bucket for the rest."""
    tail_logp = log1mexp(torch.logsumexp(top_logp, dim=-1, keepdim=True))  # (B, C, 1)
    return torch.cat([top_logp, tail_logp], dim=-1)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely ids (B, C, k) and its (k+1)-bucket log-probs (B, C, k+1)."""
    topk_ids = teacher_logits.topk(min(k, teacher_logits.shape[-1]), dim=-1).indices  # (B, C, k)
    return topk_ids, buckets_from_top(selected_logprobs(teacher_logits, topk_ids))


DIVERGENCES = {
    "reverse_kl": lambda student_logp, teacher_logp, beta: reverse_kl_of_logprobs(
        student_logp, teacher_logp
    ),
    "forward_kl": lambda student_logp, teacher_logp, beta: forward_kl_of_logprobs(
        student_logp, teacher_logp
    ),
    "gjsd": gjsd_of_logprobs,
}


def divergence(
    kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-position full-vocabulary divergence chosen by name (config `loss.kind`). (B, T)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"not a full-vocabulary divergence: {kind}")
    return DIVERGENCES[kind](_log_softmax(student_logits), _log_softmax(teacher_logits), beta)


def bucket_divergence(
    kind: str, student_buckets: torch.Tensor, teacher_buckets: torch.Tensor, beta: float
) -> torch.Tensor:
    """The divergence `kind` between two (B, T, k+1) bucket log-distributions. (B, T)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"not a full-vocabulary divergence: {kind}")
    return DIVERGENCES[kind](student_buckets, teacher_buckets, beta)


def masked_sum_loss(
    per_token: torch.Tensor, mask: torch.Tensor, n_tokens: int | torch.Tensor
) -> torch.Tensor:
    """Σ mask · per_token / n_tokens: token-mean over the whole step (see module docstring)."""
    return (per_token * mask).sum() / n_tokens


@dataclass(frozen=True)
class Scores:
    """What a per-token loss reads, each (B, T-1) at positions predicting the next token."""

    student_logprobs: torch.Tensor  # log p_S of the sampled tokens, with grad
    frozen_logprobs: torch.Tensor | None  # log p of the teacher (opd) or reference (rl), no grad
    divergence: torch.Tensor | None  # full-vocabulary divergence per position, with grad
    advantages: torch.Tensor | None  # rl: the completion's group advantage, per token


def _grpo(scores: Scores, cfg: LossConfig) -> torch.Tensor:
    """GRPO: PPO-clip on group advantages, plus kl_coef · k3 KL to the reference when scored."""
    per_token = clipped_policy(scores.student_logprobs, scores.advantages, cfg.clip_eps)
    if scores.frozen_logprobs is not None:
        per_token = per_token + cfg.kl_coef * k3_kl(scores.student_logprobs, scores.frozen_logprobs)
    return per_token


@dataclass(frozen=True)
class Objective:
    """One (train.method, loss.kind) pair: what scoring computes, and the per-token loss of it."""

    scores_frozen: bool  # score the frozen model (teacher or reference) beside the student
    divergence: str | None  # a full-vocabulary divergence for scoring to compute, or None
    per_token: Callable[[Scores, LossConfig], torch.Tensor]  # (B, T-1)


def _full_vocabulary(kind: str) -> Objective:
    return Objective(True, kind, lambda scores, cfg: scores.divergence)


# The one place where a method and a loss kind become a loss (config_sections.LOSS_KINDS lists the pairs).
OBJECTIVES: dict[tuple[str, str], Objective] = {
    ("opd", "sampled_rkl"): Objective(
        True, None, lambda s, cfg: sampled_rkl(s.student_logprobs, s.frozen_logprobs, cfg.clip_eps)
    ),
    ("opd", "reverse_kl"): _full_vocabulary("reverse_kl"),
    ("opd", "forward_kl"): _full_vocabulary("forward_kl"),
    ("opd", "gjsd"): _full_vocabulary("gjsd"),
    ("rl", "grpo"): Objective(True, None, _grpo),
    ("sft", "cross_entropy"): Objective(False, None, lambda s, cfg: -s.student_logprobs),
}
