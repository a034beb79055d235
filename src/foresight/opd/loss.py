"""Pure tensor losses of OPD and its divergences. No models, no config objects: tensors in, tensors out.

Conventions: `*_logprobs` are per-token log-probs of the sampled next tokens, shape (B, T);
`*_logits` are (B, T, V); `mask` is (B, T) with 1 on completion tokens that are trained.
Every loss returns a *sum* over masked tokens divided by `n_tokens`, the number of completion tokens
in the whole optimizer step, so that splitting a step into micro-batches does not change it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over V in at least float32 (bfloat16 logits lose the tail mass otherwise)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.log_softmax(logits, dim=-1)


def sampled_token_loss(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    n_tokens: int | torch.Tensor,
    clip_eps: float,
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled-token reverse KL as a per-token advantage, PPO-clipped (paper §2, verl's OPD).

    A_t = log p_T(y_t) - log p_old(y_t), detached; r_t = exp(log p_S(y_t) - log p_old(y_t));
    loss = -Σ_t mask_t · min(r_t A_t, clip(r_t, 1-ε, 1+ε) A_t) / n_tokens.

    This is the score-function (REINFORCE) form: its gradient is E_y~p_S[(log p_S - log p_T) ∇ log p_S],
    the exact gradient of KL(p_S ‖ p_T). Backpropagating the raw log-ratio instead would give
    E[∇ log p_S] = 0 in expectation. With one update per rollout, `old_logprobs` defaults to the
    detached current log-probs, so r_t ≡ 1 and the clip is inactive, as in the paper's code.
    """
    old = student_logprobs.detach() if old_logprobs is None else old_logprobs
    advantages = (teacher_logprobs - old).detach()  # (B, T)
    return clipped_policy_loss(student_logprobs, advantages, mask, n_tokens, clip_eps, old)


def clipped_policy_loss(
    student_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    n_tokens: int | torch.Tensor,
    clip_eps: float,
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO-clip policy-gradient loss with token-level aggregation over the whole step.

    r_t = exp(log p_S(y_t) - log p_old(y_t));  loss = -Σ mask_t · min(r_t A_t, clip(r_t, 1±ε) A_t) / n_tokens.
    `advantages` (B, T) are treated as constants; `old_logprobs` default to the detached current ones.
    """
    old = student_logprobs.detach() if old_logprobs is None else old_logprobs
    advantages = advantages.detach()
    ratio = torch.exp(student_logprobs - old)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)  # (B, T)
    return (per_token * mask).sum() / n_tokens


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


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(p_S ‖ p_T) per position: Σ_v p_S(v) (log p_S(v) - log p_T(v)). (B, T)."""
    student_logp = _log_softmax(student_logits)
    teacher_logp = _log_softmax(teacher_logits)
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(p_T ‖ p_S) per position: Σ_v p_T(v) (log p_T(v) - log p_S(v)). (B, T)."""
    student_logp = _log_softmax(student_logits)
    teacher_logp = _log_softmax(teacher_logits)
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence per position (GKD, Agarwal et al. 2024). (B, T).

    m = β p_T + (1-β) p_S;  GJSD_β = β KL(p_T ‖ m) + (1-β) KL(p_S ‖ m).
    The endpoints are degenerate (both terms vanish), so β = 0 is defined as forward KL and β = 1 as
    reverse KL, the same convention as TRL's `generalized_jsd_loss`.
    """
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits)
    student_logp = _log_softmax(student_logits)
    teacher_logp = _log_softmax(teacher_logits)
    mixture_logp = torch.logsumexp(
        torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0
    )
    kl_teacher = (teacher_logp.exp() * (teacher_logp - mixture_logp)).sum(-1)
    kl_student = (student_logp.exp() * (student_logp - mixture_logp)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def divergence(
    kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-position full-vocabulary divergence chosen by name (config `loss.kind`). (B, T)."""
    if kind == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits)
    if kind == "forward_kl":
        return forward_kl(student_logits, teacher_logits)
    if kind == "gjsd":
        return generalized_jsd(student_logits, teacher_logits, beta)
    raise ValueError(f"not a full-vocabulary divergence: {kind}")


def masked_sum_loss(
    per_token: torch.Tensor, mask: torch.Tensor, n_tokens: int | torch.Tensor
) -> torch.Tensor:
    """Σ mask · per_token / n_tokens: token-mean over the whole step (see module docstring)."""
    return (per_token * mask).sum() / n_tokens
