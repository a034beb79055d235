"""Per-token scores of a rollout under a model: hidden states once, then the LM head in chunks.

Only the decoder's last hidden states (B, T, H) are kept whole. Logits exist one chunk of positions at
a time, and with gradients the chunk is recomputed in backward (activation checkpointing), so no
float32 (B, T, V) tensor of either model is ever alive: what makes 150k-token vocabularies fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from foresight.train.distributed import is_sharded
from foresight.train.loss import (
    at_least_float32,
    bucket_divergence,
    buckets_from_top,
    divergence,
    selected_logprobs,
    token_logsumexp,
)
from foresight.train.loss import teacher_topk as teacher_topk_buckets
from foresight.train.rollout import Rollout, StepBatch


@dataclass(frozen=True)
class TokenScores:
    """Scores of the next token at positions 0..T-2 (position t predicts ids[:, t+1]); zeros
    before P-1, where the next token is still the prompt's."""

    student_logprobs: torch.Tensor  # (B, T-1) log p_S of the sampled tokens
    teacher_logprobs: torch.Tensor | None  # (B, T-1) log p_T of the sampled tokens
    divergence: torch.Tensor | None  # (B, T-1) full-vocabulary divergence, when asked for
    student_entropy: torch.Tensor | None = None  # (B, T-1) H(p_S), detached, when asked for


def own_dtype(device: torch.device) -> torch.autocast:
    """Autocast off: a frozen model (teacher, reference) computes in the dtype it was loaded in
    (model.teacher_dtype), not under the student's bfloat16 autocast (model.dtype, train.compute)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def hidden_states(model: PreTrainedModel, rollout: Rollout) -> torch.Tensor:
    """The decoder's final hidden states (B, T, H), before the LM head."""
    device = model.device
    inputs = {
        "input_ids": rollout.ids.to(device),
        "attention_mask": rollout.attention_mask.to(device),
        "position_ids": rollout.position_ids.to(device),
        "use_cache": False,
    }
    if is_sharded(model):
        # FSDP2 gathers the root unit (embeddings, final norm, LM head) only in the root's forward;
        # the last hidden state is the decoder's output, and one position of logits is the waste.
        return model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    return model.get_decoder()(**inputs).last_hidden_state


def head_logits(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on a chunk of hidden states (B, C, H) -> (B, C, V). The chunk is a column slice
    of (B, T, H), which a linear layer would run as a batched matmul against the weight repeated
    per row (measured 2.4x slower for SmolLM2's 49k-token head); a contiguous copy of the (small)
    hidden states makes it one matrix product."""
    return head(hidden.contiguous())


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy H(p) = -Σ_v p_v log p_v per position (B, C) of logits (B, C, V), in
    at least float32 and detached: a metric (train/entropy), never a loss term. entr(0) = 0, so a
    token of probability 0 adds nothing."""
    with torch.no_grad():
        return torch.special.entr(torch.softmax(at_least_float32(logits), dim=-1)).sum(-1)


def _teacher_chunk(
    teacher_head: torch.nn.Module,
    teacher_hidden: torch.Tensor,
    next_ids: torch.Tensor,
    teacher_topk: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """The teacher's small scores of a chunk, under no_grad: log p_T of the sampled tokens (B, C),
    plus its top-k ids (B, C, k) and bucket log-probs (B, C, k+1) when `teacher_topk` is set. Only
    these cross to the student's device, not the teacher's (B, C, V) logits."""
    with torch.no_grad(), own_dtype(teacher_hidden.device):
        teacher_logits = head_logits(teacher_head, teacher_hidden)  # (B, C, V)
        teacher_logp = sampled_logprobs(teacher_logits, next_ids.to(teacher_logits.device))
        if teacher_topk is None:
            return (teacher_logp.to(device),)
        topk_ids, teacher_buckets = teacher_topk_buckets(teacher_logits, teacher_topk)
        return teacher_logp.to(device), topk_ids.to(device), teacher_buckets.to(device)


def _chunk_scores(
    student_head: torch.nn.Module,
    teacher_head: torch.nn.Module | None,
    kind: str | None,
    beta: float,
    with_entropy: bool,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    next_ids: torch.Tensor,
    *teacher_scores: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """Scores of one chunk (student log-probs, teacher log-probs, divergence, student entropy; None
    where not computed). `teacher_scores` are `_teacher_chunk`'s, computed outside the student's
    activation checkpoint when they are small; a full-vocabulary divergence instead computes the
    teacher's logits here, so they are never stored for every chunk at once."""
    student_logits = head_logits(student_head, student_hidden)  # (B, C, V)
    # From the logits already here: no extra LM head pass (backward's recompute repeats it).
    entropy = token_entropy(student_logits) if with_entropy else None  # (B, C)
    return (
        *_chunk_logprobs(
            student_logits, teacher_head, kind, beta, teacher_hidden, next_ids, *teacher_scores
        ),
        entropy,
    )


def _chunk_logprobs(
    student_logits: torch.Tensor,
    teacher_head: torch.nn.Module | None,
    kind: str | None,
    beta: float,
    teacher_hidden: torch.Tensor | None,
    next_ids: torch.Tensor,
    *teacher_scores: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """`_chunk_scores`' student and teacher log-probs and divergence, from the student's logits."""
    if teacher_head is not None and teacher_scores and kind is not None:
        teacher_logp, topk_ids, teacher_buckets = teacher_scores
        # The sampled token and the teacher's top k in one pass over the (B, C, V) logits.
        wanted = torch.cat([next_ids[..., None], topk_ids], dim=-1)  # (B, C, 1+k)
        chosen = selected_logprobs(student_logits, wanted)  # (B, C, 1+k)
        student_buckets = buckets_from_top(chosen[..., 1:])  # (B, C, k+1)
        per_position = bucket_divergence(kind, student_buckets, teacher_buckets, beta)
        return chosen[..., 0], teacher_logp, per_position
    student_logp = selected_logprobs(student_logits, next_ids[..., None])[..., 0]  # (B, C)
    if teacher_head is None:
        return student_logp, None, None
    if not teacher_scores:
        with torch.no_grad(), own_dtype(teacher_hidden.device):
            teacher_logits = head_logits(teacher_head, teacher_hidden)  # (B, C, V)
            teacher_logp = sampled_logprobs(teacher_logits, next_ids.to(teacher_logits.device))
            teacher_logits = teacher_logits.to(student_logits.device)
        per_position = divergence(kind, student_logits, teacher_logits, beta)
        return student_logp, teacher_logp.to(student_logits.device), per_position
    return student_logp, teacher_scores[0], None  # sampled tokens only


def sampled_logprobs(
    logits: torch.Tensor, next_ids: torch.Tensor, logsumexp: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(next token) (B, C): gathered from the logits in their own dtype, then upcast, minus
    the float32 normalizer, so no float32 copy of the (B, C, V) log-softmax is ever kept."""
    if logsumexp is None:
        logsumexp = token_logsumexp(logits)
    return at_least_float32(logits.gather(-1, next_ids[..., None]))[..., 0] - logsumexp[..., 0]


@torch.no_grad()
def teacher_hidden_states(
    teacher: PreTrainedModel, rollout: Rollout, teacher_rollout: Rollout | None = None
) -> torch.Tensor:
    """The teacher's hidden states (B, T, H) under no_grad: it is a fixed target, never trained.

    `teacher_rollout` holds the same completions after the teacher's own (privileged) prompts
    (self-distillation, completions.privileged_rollout). Its states are shifted into `rollout`'s
    columns, so column P-1+j is the teacher's state before completion token j, as for the student;
    the student's prompt columns before P-1 are zeros, which every loss masks out.
    """
    with own_dtype(teacher.device):
        if teacher_rollout is None:
            return hidden_states(teacher, rollout)
        privileged = hidden_states(teacher, teacher_rollout)  # (B, T', H), T' = P' + G
    batch, width = rollout.ids.shape
    aligned = privileged.new_zeros(batch, width, privileged.shape[-1])  # (B, T, H)
    aligned[:, rollout.prompt_width - 1 :] = privileged[:, teacher_rollout.prompt_width - 1 :]
    return aligned


def frozen_hidden_states(frozen: PreTrainedModel | None, batch: StepBatch) -> torch.Tensor | None:
    """The frozen model's hidden states (B, T, H) of a step's batch, or None without one; after the
    teacher's privileged prompts when the batch carries them (self-distillation)."""
    if frozen is None:
        return None
    return teacher_hidden_states(frozen, batch.rollout, batch.teacher_rollout)


def score_tokens(
    student: PreTrainedModel,
    rollout: Rollout,
    teacher: PreTrainedModel | None = None,
    kind: str | None = None,
    beta: float = 0.5,
    chunk_tokens: int = 64,
    teacher_hidden: torch.Tensor | None = None,
    teacher_topk: int | None = None,
    student_entropy: bool = False,
) -> TokenScores:
    """Student (with grad if enabled) and teacher (no grad) scores of the rollout's tokens.

    kind = None gives sampled-token log-probs only; a full-vocabulary divergence (loss.DIVERGENCES)
    also gives the per-position divergence, over the teacher's top `teacher_topk` tokens plus a tail bucket when
    set (loss.py `topk_divergence`). `teacher_hidden` (B, T, H) may be passed in when computed.
    `student_entropy` also gives the student's full-vocabulary entropy per position (detached).
    """
    # Position t predicts ids[:, t+1], so the first completion token is predicted at P-1. The
    # positions before it predict prompt tokens, which no loss reads: their LM head is skipped
    # (for a chat model's long prompt, most of the head's cost) and their scores are zeros.
    first = max(rollout.prompt_width - 1, 0)
    student_hidden = hidden_states(student, rollout)[:, first:-1]  # (B, C, H), C = T-1-first
    teacher_head = None
    if teacher is not None:
        if teacher_hidden is None:
            teacher_hidden = teacher_hidden_states(teacher, rollout)
        teacher_hidden = teacher_hidden[:, first:-1]  # (B, C, H)
        teacher_head = teacher.get_output_embeddings()
    next_ids = rollout.ids[:, first + 1 :].to(student_hidden.device)  # (B, C)
    student_head = student.get_output_embeddings()
    pieces: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, next_ids.shape[1], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        teacher_scores = ()
        if teacher_head is not None and (kind is None or teacher_topk is not None):
            # Small teacher results, computed once here rather than again in the backward.
            topk = None if kind is None else teacher_topk
            teacher_scores = _teacher_chunk(
                teacher_head, teacher_hidden[:, part], next_ids[:, part], topk, next_ids.device
            )
        args = (
            student_head,
            teacher_head,
            kind,
            beta,
            student_entropy,
            student_hidden[:, part],
            None if teacher_hidden is None else teacher_hidden[:, part],
            next_ids[:, part],
            *teacher_scores,
        )
        if torch.is_grad_enabled() and student_hidden.requires_grad:
            # Recompute the chunk's logits in backward instead of storing (B, C, V) per chunk.
            pieces.append(checkpoint(_chunk_scores, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_scores(*args))
    columns = [  # (B, T-1) each, or None where not computed
        None if parts[0] is None else F.pad(torch.cat(parts, dim=1), (first, 0))
        for parts in zip(*pieces)
    ]
    return TokenScores(*columns)
