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


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over V in at least float32 (bfloat16 logits lose the tail mass otherwise)."""
    return F.log_softmax(at_least_float32(logits), dim=-1)


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
    return reverse_kl_of_logprobs(_log_softmax(student_logits), _log_softmax(teacher_logits))


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(p_T ‖ p_S) per position: Σ_v p_T(v) (log p_T(v) - log p_S(v)). (B, T)."""
    return forward_kl_of_logprobs(_log_softmax(student_logits), _log_softmax(teacher_logits))


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence per position (GKD, Agarwal et al. 2024). (B, T).

    m = β p_T + (1-β) p_S;  GJSD_β = β KL(p_T ‖ m) + (1-β) KL(p_S ‖ m).
    The endpoints are degenerate (both terms vanish), so β = 0 is defined as forward KL and β = 1 as
    reverse KL, the same convention as TRL's `generalized_jsd_loss`.
    """
    return gjsd_of_logprobs(_log_softmax(student_logits), _log_softmax(teacher_logits), beta)


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


def bucket_logprobs(logits: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Log-probs of the k tokens `topk_ids` (B, C, k) and of one tail bucket holding the rest of
    the mass: (B, C, k+1)."""
    return buckets_from_top(selected_logprobs(logits, topk_ids))


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely ids (B, C, k) and its (k+1)-bucket log-probs (B, C, k+1)."""
    topk_ids = teacher_logits.topk(min(k, teacher_logits.shape[-1]), dim=-1).indices  # (B, C, k)
    return topk_ids, bucket_logprobs(teacher_logits, topk_ids)


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


def topk_divergence(
    kind: str,
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_buckets: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The divergence `kind` between the two distributions coarsened to k+1 buckets: the teacher's
    top-k tokens, one by one, and the tail of every other token (B, T).

    p̃(b) = p(b) for the k ids, p̃(tail) = 1 - Σ_k p(b), for both models, on the *teacher's* ids.
    Coarsening never increases an f-divergence (data processing), so the top-k value is a lower
    bound of the full one, exact at k = V, and close when the teacher's top k hold its mass.
    """
    student_buckets = bucket_logprobs(student_logits, teacher_topk_ids)
    return bucket_divergence(kind, student_buckets, teacher_buckets, beta)


def masked_sum_loss(
    per_token: torch.Tensor, mask: torch.Tensor, n_tokens: int | torch.Tensor
) -> torch.Tensor:
    """Σ mask · per_token / n_tokens: token-mean over the whole step (see module docstring)."""
    return (per_token * mask).sum() / n_tokens
