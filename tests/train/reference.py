"""Test-only references for the losses: brute-force float64 loops over explicit probability vectors,
and the logits-level divergences the tests call by name, built from what train/loss.py keeps.

Brute force (numpy, one position at a time, the formula as written) is what src is checked against;
the logits-level wrappers only spell src's own functions the way the tests read them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from foresight.train.loss import bucket_divergence, buckets_from_top, divergence, selected_logprobs


# -- brute force --------------------------------------------------------------------------------
def softmax_np(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def kl_np(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p (log p - log q), terms with p = 0 dropped (0 log 0 = 0)."""
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def jsd_np(p_s: np.ndarray, p_t: np.ndarray, beta: float) -> float:
    """GJSD_β = β KL(p_T ‖ m) + (1-β) KL(p_S ‖ m), m = β p_T + (1-β) p_S."""
    m = beta * p_t + (1 - beta) * p_s
    return beta * kl_np(p_t, m) + (1 - beta) * kl_np(p_s, m)


def divergence_np(kind: str, beta: float, p_s: np.ndarray, p_t: np.ndarray) -> float:
    """The divergence `kind` of two explicit distributions; GJSD's ends are the two KLs."""
    if kind == "reverse_kl" or (kind == "gjsd" and beta == 1.0):
        return kl_np(p_s, p_t)
    if kind == "forward_kl" or (kind == "gjsd" and beta == 0.0):
        return kl_np(p_t, p_s)
    return jsd_np(p_s, p_t, beta)


def brute_force(student: np.ndarray, teacher: np.ndarray, fn) -> np.ndarray:
    """Loop over every (b, t) position and apply fn(p_S, p_T) to explicit probability vectors."""
    out = np.zeros(student.shape[:2])
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            out[b, t] = fn(softmax_np(student[b, t]), softmax_np(teacher[b, t]))
    return out


# -- src's functions under the names the tests use ----------------------------------------------
def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(p_S ‖ p_T) per position (B, T)."""
    return divergence("reverse_kl", student_logits, teacher_logits, 0.5)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(p_T ‖ p_S) per position (B, T)."""
    return divergence("forward_kl", student_logits, teacher_logits, 0.5)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> torch.Tensor:
    """GJSD_β per position (B, T); β = 0 is forward KL, β = 1 reverse KL (TRL's convention)."""
    return divergence("gjsd", student_logits, teacher_logits, beta)


def bucket_logprobs(logits: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Log-probs of the k tokens `topk_ids` (B, T, k), then one tail bucket: (B, T, k+1)."""
    return buckets_from_top(selected_logprobs(logits, topk_ids))


def topk_divergence(
    kind: str,
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_buckets: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The divergence `kind` between both distributions coarsened to the teacher's top-k tokens
    plus a tail bucket (B, T): what scoring computes with loss.teacher_topk set."""
    student_buckets = bucket_logprobs(student_logits, teacher_topk_ids)
    return bucket_divergence(kind, student_buckets, teacher_buckets, beta)
