"""EffOPD's validation signals for any trainer: prompts in, the `step -> score(model)` callable
(search.py `Validator`) out. `foresight train` builds its validator here too (train/evaluate.py).

  reward_validator: the mean of a reward function over one completion per prompt, sampled at
    temperature 1 from the scored weights; with a verifier's 0/1 reward it is the paper's V (§5).
    Every candidate of one search draws from the same seed (common random numbers), which removes
    part of the noise.
  kl_validator: minus the full-vocabulary reverse KL to a teacher per completion token,
    teacher-forced on completions sampled once per search from the student's W_t: dense, needs no
    verifier, far less noisy.

A prompt is a string (raw text) or a chat message list (rendered with the tokenizer's chat template,
the generation prompt added; the template writes its own special tokens). A raw prompt starts with
exactly one BOS when the tokenizer has one, as foresight's own rollouts do: BOS is prepended unless
the text already begins with it. TRL encodes a raw prompt with the tokenizer's own special tokens,
which for many tokenizers (the committed tiny ones among them) adds no BOS, so a model trained with
BOS is trained without it: `prompts_with_bos` writes BOS into the texts TRL gets.

Sampling is transformers' `model.generate` (the library's KV cache), from the full distribution at
temperature 1 (no top-k, top-p or min-p cut, whatever the model's generation_config says), under
`torch.random.fork_rng` seeded from (seed, step): a search depends on its step and the weights
only, and the trainer's random streams are left exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from torch.nn.utils.rnn import pad_sequence
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from foresight.effopd.search import Validator
from foresight.errors import UserError
from foresight.templates import stop_ids

Prompt = str | list[dict[str, str]]  # raw text, or chat messages [{"role": ..., "content": ...}]
# reward(completion text, example) -> float, where the example is the row passed for that prompt
# (`rows`), or the prompt itself when no rows were passed.
Reward = Callable[[str, Any], float]

# Rows of one full-vocabulary KL forward: at most this many logits (256 MiB in float32) per model.
KL_CHUNK_LOGITS = 2**26


@dataclass(frozen=True)
class Completions:
    """One sampled completion per prompt, as ids a model can be teacher-forced on."""

    ids: torch.Tensor  # (B, T) left-padded prompts, then completions right-padded after their end
    attention_mask: torch.Tensor  # (B, T) 1 on real prompt and completion tokens
    prompt_width: int  # P: columns [0, P) are the (padded) prompts, T = P + G
    completion_mask: torch.Tensor  # (B, G) 1 on generated tokens up to and including the end token
    texts: list[str]  # each completion without its end token or special tokens, as TRL decodes


def search_seed(seed: int, step: int) -> int:
    """The sampling seed of the search at `step` (63 bits, the range torch's generators take)."""
    return (seed * 1_000_003 + step) % 2**63


def prompts_with_bos(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[str]:
    """`prompts` with the BOS token written in front of each text whose encoding with the
    tokenizer's special tokens (what TRL does with a raw prompt) would not start with BOS."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return list(prompts)
    encoded = tokenizer(list(prompts))["input_ids"]
    return [p if ids[:1] == [bos] else tokenizer.bos_token + p for p, ids in zip(prompts, encoded)]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]
) -> list[list[int]]:
    """Token ids of each prompt: a string with exactly one BOS in front (when the tokenizer has
    one), a message list rendered with the chat template awaiting the assistant's turn."""
    if not prompts:
        raise UserError("The validator got no prompts; pass a non-empty list of prompts.")
    rows = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            bos = tokenizer.bos_token_id
            rows.append(ids if bos is None or ids[:1] == [bos] else [bos, *ids])
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            rows.append(_encode_chat(tokenizer, prompt))
        else:
            raise UserError(
                f"A validation prompt is {type(prompt).__name__} {str(prompt)[:60]!r}; pass each "
                "prompt as a string or as a list of chat messages ({'role': ..., 'content': ...})."
            )
    return rows


def _encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"A validation prompt is a chat message list but {tokenizer.name_or_path} has no chat "
            "template; pass the prompts as strings or use a tokenizer with a template."
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:
        raise UserError(
            f"The chat template of {tokenizer.name_or_path} fails on a validation prompt ({exc}); "
            "fix the messages or the template."
        ) from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end a completion: the tokenizer's EOS (and those foresight recorded on it),
    then the model's generation_config ones (chat models often list an end-of-turn token)."""
    declared = model.generation_config.eos_token_id
    declared = [] if declared is None else [declared] if isinstance(declared, int) else declared
    return list(dict.fromkeys([*stop_ids(tokenizer), *declared]))


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    seed: int,
) -> Completions:
    """One completion per prompt at temperature 1, drawn from `seed` alone (see the module doc)."""
    ends = end_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ends[0]
    rows = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
    prompts = pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side="left")
    ones = [torch.ones(len(ids), dtype=torch.long) for ids in prompt_ids]
    prompt_mask = pad_sequence(ones, batch_first=True, padding_value=0, padding_side="left")
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,  # 0 and 1.0 switch the cuts off: the model's generation_config may set them
        top_p=1.0,
        min_p=0.0,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=ends,
        pad_token_id=pad_id,
    )
    devices = list(range(torch.cuda.device_count()))  # manual_seed seeds every CUDA device too
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=prompts.to(model.device),
            attention_mask=prompt_mask.to(model.device),
            generation_config=config,
        ).cpu()  # (B, P + G)
    width = prompts.shape[1]
    generated = out[:, width:]  # (B, G)
    # Real tokens run up to and including the first end id; after it generate writes padding,
    # whose id may equal EOS, so the mask comes from the position of the first end, not from ids.
    is_end = torch.isin(generated, torch.tensor(ends))  # (B, G)
    completion_mask = ((is_end.cumsum(-1) - is_end.long()) == 0).long()  # (B, G)
    texts = tokenizer.batch_decode(
        [
            ids[(mask == 1) & ~end].tolist()
            for ids, mask, end in zip(generated, completion_mask, is_end)
        ],
        skip_special_tokens=True,
    )
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, T)
    return Completions(out, attention_mask, width, completion_mask, texts)


def _completion_logprobs(
    model: PreTrainedModel, completions: Completions, rows: slice
) -> torch.Tensor:
    """log p(· | prefix) over the vocabulary (b, G, V) at the positions that predict the completion
    tokens of `rows`: column P-1+j predicts completion token j."""
    attention_mask = completions.attention_mask[rows]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's start
    width = completions.completion_mask.shape[1]
    logits = model(
        input_ids=completions.ids[rows].to(model.device),
        attention_mask=attention_mask.to(model.device),
        position_ids=position_ids.to(model.device),
        logits_to_keep=width + 1,
        use_cache=False,
    ).logits[:, :-1]  # (b, G, V)
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


@torch.no_grad()
def mean_reverse_kl(
    student: PreTrainedModel, teacher: PreTrainedModel, completions: Completions
) -> float:
    """KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v)) at each completion token's position,
    averaged over the completion tokens: OPD's objective (paper §2), exact over the vocabulary."""
    batch, width = completions.completion_mask.shape
    vocab = student.config.get_text_config().vocab_size
    per_chunk = max(1, KL_CHUNK_LOGITS // ((width + 1) * vocab))
    total, count = 0.0, 0
    for start in range(0, batch, per_chunk):
        rows = slice(start, start + per_chunk)
        student_logp = _completion_logprobs(student, completions, rows)  # (b, G, V)
        teacher_logp = _completion_logprobs(teacher, completions, rows).to(student_logp.device)
        if teacher_logp.shape != student_logp.shape:
            raise UserError(
                f"The student scores {student_logp.shape[-1]} tokens and the teacher "
                f"{teacher_logp.shape[-1]}; the KL signal needs a teacher with the student's "
                "vocabulary."
            )
        kl = (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)  # (b, G)
        mask = completions.completion_mask[rows].to(kl.device)  # (b, G)
        total += float((kl.double() * mask).sum())
        count += int(mask.sum())
    return total / count


def _check_length(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens is {max_new_tokens}; the validator needs at least 1.")


def reward_validator(
    prompts: Sequence[Prompt],
    reward: Reward,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    seed: int,
    rows: Sequence[Any] | None = None,
) -> Validator:
    """V = (1/B) Σ_i reward(completion_i, example_i), one completion per prompt sampled from the
    scored weights at temperature 1. example_i is rows[i] (e.g. the dataset row with the answer)
    or, without rows, prompts[i]."""
    _check_length(max_new_tokens)
    prompt_ids = encode_prompts(tokenizer, prompts)
    examples = list(prompts if rows is None else rows)
    if len(examples) != len(prompt_ids):
        raise UserError(
            f"The validator got {len(prompt_ids)} prompts but {len(examples)} rows; pass one row "
            "per prompt, in the same order."
        )

    def begin(step: int) -> Callable[[torch.nn.Module], float]:
        drawn_from = search_seed(seed, step)

        def score(candidate: torch.nn.Module) -> float:
            completions = sample(candidate, tokenizer, prompt_ids, max_new_tokens, drawn_from)
            rewards = [float(reward(text, ex)) for text, ex in zip(completions.texts, examples)]
            return sum(rewards) / len(rewards)

        return score

    return begin


def kl_validator(
    prompts: Sequence[Prompt],
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    seed: int,
) -> Validator:
    """V = −KL(p_candidate ‖ p_teacher) per completion token (`mean_reverse_kl`), on completions
    sampled once per search from `student`, the model being trained (its W_t at that search)."""
    _check_length(max_new_tokens)
    prompt_ids = encode_prompts(tokenizer, prompts)

    def begin(step: int) -> Callable[[torch.nn.Module], float]:
        completions = sample(
            student, tokenizer, prompt_ids, max_new_tokens, search_seed(seed, step)
        )
        return lambda candidate: -mean_reverse_kl(candidate, teacher, completions)

    return begin
