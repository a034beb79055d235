"""Where the on-policy methods' completions come from: the student samples, batched on the model's
own forward and the library's KV cache (`DynamicCache`), for every architecture.

  opd -- one completion per prompt (with a teacher prompt template, also the same completions after
         the teacher's privileged prompts, for self-distillation)
  rl  -- G completions per prompt
Every sampled completion gets the task's reward (tasks/verifiers.py): GRPO's signal for rl, the
reward/mean metric for opd.
Prompts are left-padded so that every row's next token sits in the last column; completions are
right-padded after their EOS. The completion mask is built from *when* a token was generated, not from
its id, so a pad id equal to the EOS id can never unmask padding or mask the real EOS. Prompts and
sampling seeds come from (run seed, step) only, so every step is reproducible.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from foresight.config import Config
from foresight.errors import UserError
from foresight.tasks import Example, Row, Task
from foresight.tasks.base import Prompt
from foresight.templates import check_text_prompts, encode_chat_prompts, stop_ids, uses_chat


def stream_seed(seed: int, step: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, step, stream):
    0 = data order, 1 = student sampling, 2 = EffOPD validation prompts, 3 = teacher sampling.
    Reduced to 63 bits, the range torch's generators take (a no-op for seeds below ~2^40)."""
    return ((seed * 1_000_003 + step) * 4 + stream) % 2**63


@dataclass(frozen=True)
class Rollout:
    ids: torch.Tensor  # (B, T) left-padded prompt then completion, T = P + G
    attention_mask: torch.Tensor  # (B, T) 1 on real prompt and completion tokens
    position_ids: torch.Tensor  # (B, T) positions counted from each row's first real token
    completion_mask: torch.Tensor  # (B, T) 1 on generated tokens up to and including EOS
    prompt_width: int  # P: columns [0, P) are the (padded) prompt

    def rows(self, index: slice) -> Rollout:
        """The sub-rollout of rows `index` (a micro-batch)."""
        return Rollout(
            self.ids[index],
            self.attention_mask[index],
            self.position_ids[index],
            self.completion_mask[index],
            self.prompt_width,
        )

    def completion_ids(self) -> list[list[int]]:
        """Each row's generated tokens (its EOS included, when it has one)."""
        rows = []
        for ids_row, mask_row in zip(self.ids.tolist(), self.completion_mask.tolist()):
            rows.append(
                [
                    t
                    for t, m in zip(ids_row[self.prompt_width :], mask_row[self.prompt_width :])
                    if m
                ]
            )
        return rows


@dataclass(frozen=True)
class StepBatch:
    rollout: Rollout
    # (B·G,) task rewards of the sampled completions (verifier 0/1 or a python: reward's float):
    # GRPO's signal (rl), the reward/mean metric (opd); None for sft's given completions.
    rewards: torch.Tensor | None
    # Self-distillation: the same completions after the teacher's privileged prompts.
    teacher_rollout: Rollout | None = None


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt]) -> list[list[int]]:
    """Token ids of each prompt: rendered with the chat template when chat is on (templates.py),
    else raw text with BOS prepended when the tokenizer has one."""
    if uses_chat(tokenizer):
        return encode_chat_prompts(tokenizer, prompts)  # the template places its own BOS
    check_text_prompts(tokenizer, prompts)  # a conversation needs the chat template
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [([bos] if bos is not None else []) + ids for ids in encoded]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ragged id lists -> ids (B, P) and attention mask (B, P)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _next_logits(
    model: PreTrainedModel,
    cache: DynamicCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """Logits (b, V) after each row's last input; the LM head runs on that column only."""
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1]


def _draw(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, greedy: bool
) -> torch.Tensor:
    """One token per row (B,) from softmax(logits / temperature), or the argmax."""
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None,
    greedy: bool = False,
) -> Rollout:
    """Generate one completion per prompt; stop each row at EOS and the batch when all rows stopped.

    Sampling draws from `generator` only, so a run's completions depend on (seed, step) and nothing
    else: that is what makes resume exact. Rows that stopped leave the KV cache and the forward
    passes (they cost nothing after their EOS), but every step still draws for all B rows, from the
    stopped rows' last logits: the generator then consumes the same random numbers as a loop that
    keeps every row, so the completions do not depend on when other rows stop.
    """
    with torch.inference_mode():
        ids, attention_mask, completion_mask, width = _generate(
            model, tokenizer, prompts, max_new_tokens, temperature, generator, greedy
        )
    # Outside inference mode: the student's forward pass with gradients reads these tensors.
    ids, attention_mask, completion_mask = (
        ids.clone(),
        attention_mask.clone(),
        completion_mask.clone(),
    )
    return Rollout(ids, attention_mask, positions(attention_mask), completion_mask, width)


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None,
    greedy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    device = model.device
    pad_id = tokenizer.pad_token_id
    stops = torch.tensor(stop_ids(tokenizer), device=device)  # EOS and the model's other end ids
    prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, prompts), pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    batch, width = prompt_ids.shape
    cache = DynamicCache()
    attention = prompt_mask  # (b, P + t): the rows still in the cache, in cache order
    position = positions(prompt_mask)
    logits = _next_logits(model, cache, prompt_ids, attention, position)  # (B, V)
    next_position = position[:, -1:] + 1  # (b, 1)
    cached_rows = torch.arange(batch, device=device)  # (b,) batch row of each cache row
    alive = torch.ones(batch, dtype=torch.bool, device=device)  # (B,)
    completion = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
    generated = max_new_tokens
    for step in range(max_new_tokens):
        token = torch.where(alive, _draw(logits, temperature, generator, greedy), pad_id)  # (B,)
        completion[:, step] = token
        completion_mask[:, step] = alive
        alive = alive & ~torch.isin(token, stops)
        if step == max_new_tokens - 1 or not bool(alive.any()):
            generated = step + 1
            break  # no forward pass for logits nobody will sample from
        still = alive[cached_rows]  # (b,)
        if not bool(still.all()):  # some cached rows just stopped: drop them from the cache
            keep = still.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            cached_rows, attention, next_position = (
                cached_rows[keep],
                attention[keep],
                next_position[keep],
            )
        attention = torch.cat([attention, attention.new_ones(len(cached_rows), 1)], dim=1)
        logits[cached_rows] = _next_logits(
            model, cache, token[cached_rows, None], attention, next_position
        )
        next_position = next_position + 1
    completion, completion_mask = completion[:, :generated], completion_mask[:, :generated]
    ids = torch.cat([prompt_ids, completion], dim=1)  # (B, T)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, T)
    full_completion_mask = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
    return ids, attention_mask, full_completion_mask, width


def ended_with_eos(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[bool]:
    """Whether each row stopped at an end token (EOS or another of stop_ids), not at
    max_new_tokens."""
    stops = set(stop_ids(tokenizer))
    return [bool(row) and row[-1] in stops for row in rollout.completion_ids()]


def truncated_rows(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> torch.Tensor:
    """(B,) bool: the sampled completions cut at max_new_tokens, i.e. whose last generated token is
    not an end token (sampling stops a row only at one of stop_ids or at the cap)."""
    lengths = rollout.completion_mask.sum(1)  # (B,) completions are contiguous after the prompt
    last_column = (rollout.prompt_width + lengths - 1).clamp(min=0)  # (B,)
    last_ids = rollout.ids.gather(1, last_column[:, None])[:, 0]  # (B,)
    stops = torch.tensor(stop_ids(tokenizer), device=last_ids.device)
    return (lengths > 0) & ~torch.isin(last_ids, stops)


def decode_completions(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Completion texts without their end token or padding."""
    stops = set(stop_ids(tokenizer))
    rows = [[t for t in row if t not in stops] for row in rollout.completion_ids()]
    return tokenizer.batch_decode(rows, skip_special_tokens=False)


def teacher_forced(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    ended: list[bool] | None = None,
) -> Rollout:
    """A Rollout of given completions, EOS appended where the completion `ended` (default: all):
    a sample cut off at max_new_tokens must not teach the student to stop there."""
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, prompts), pad_id)
    ended = ended if ended is not None else [True] * len(completions)
    encoded = tokenizer(completions, add_special_tokens=False)["input_ids"]
    completion_rows = [ids + [eos_id] * stop for ids, stop in zip(encoded, ended)]
    width = max(len(r) for r in completion_rows)
    completion = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, G)
    completion_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, G)
    for i, row in enumerate(completion_rows):
        completion[i, : len(row)] = torch.tensor(row)
        completion_mask[i, : len(row)] = 1
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, T)
    return Rollout(
        torch.cat([prompt_ids, completion], dim=1),
        attention_mask,
        positions(attention_mask),
        torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1),
        prompt_ids.shape[1],
    )


def teacher_prompts(template: str, prompts: list[str]) -> list[str]:
    """Each prompt inside task.teacher_prompt_template (a plain replace: the template's other
    braces, and the prompt's, stay as they are)."""
    return [template.replace("{prompt}", prompt) for prompt in prompts]


def privileged_rollout(
    tokenizer: PreTrainedTokenizerBase, rollout: Rollout, prompts: list[str]
) -> Rollout:
    """`rollout`'s completions (ids, masks) after other prompts, encoded as the student's are
    (chat template or BOS): what the teacher scores in self-distillation. ids (B, P' + G)."""
    prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
    width = rollout.prompt_width
    completion_attention = rollout.attention_mask[:, width:].to(prompt_mask.device)  # (B, G)
    completion_mask = rollout.completion_mask[:, width:].to(prompt_mask.device)  # (B, G)
    attention_mask = torch.cat([prompt_mask, completion_attention], dim=1)  # (B, P' + G)
    return Rollout(
        torch.cat([prompt_ids, rollout.ids[:, width:].to(prompt_ids.device)], dim=1),
        attention_mask,
        positions(attention_mask),
        torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1),
        prompt_ids.shape[1],
    )


def step_examples(task: Task, cfg: Config, step: int) -> list[Example]:
    return task.sample("train", cfg.rollout.prompts_per_step, stream_seed(cfg.train.seed, step, 0))


def student_batch(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[Example],
    cfg: Config,
    seed: int,
) -> StepBatch:
    """On-policy samples drawn from `seed` with their task rewards; for rl, G per prompt (rows
    grouped by prompt). The caller puts the student in eval mode."""
    group = cfg.rollout.group_size
    prompts = [e.prompt for e in examples for _ in range(group)]
    generator = torch.Generator().manual_seed(seed)
    rollout = sample(
        student, tokenizer, prompts, cfg.rollout.max_new_tokens, cfg.rollout.temperature, generator
    )
    answers = [e.answer for e in examples for _ in range(group)]
    completions = decode_completions(tokenizer, rollout)
    rewards = torch.tensor([float(task.verify(c, a)) for c, a in zip(completions, answers)])
    if cfg.task.teacher_prompt_template is not None:  # opd only (config check)
        privileged = teacher_prompts(cfg.task.teacher_prompt_template, prompts)
        return StepBatch(rollout, rewards, privileged_rollout(tokenizer, rollout, privileged))
    return StepBatch(rollout, rewards)  # rewards (B·G,)


def prompt_fit(
    tokenizer: PreTrainedTokenizerBase, limit: int, policy: str
) -> Callable[[list[Row]], list[Row]]:
    """Check a user task's rows against `limit` prompt tokens (the context left after
    rollout.max_new_tokens): `policy` error refuses the first row over it, naming its line; drop
    leaves such rows out; truncate_left cuts each prompt's start until it fits. Says what it did."""

    def fit(rows: list[Row]) -> list[Row]:
        lengths = [len(ids) for ids in encode_prompts(tokenizer, [e.prompt for _, e, _ in rows])]
        over = [i for i, length in enumerate(lengths) if length > limit]
        if not over:
            return rows
        where, example, _ = rows[over[0]]
        if policy == "error":
            raise UserError(
                f"{where} has a prompt of {lengths[over[0]]} tokens, more than the {limit} that "
                "leave room for rollout.max_new_tokens in the model's context; shorten it, or set "
                "task.too_long to drop or truncate_left."
            )
        done = "dropped" if policy == "drop" else "cut the start of"
        print(f"task: {done} {len(over)} prompt(s) over {limit} tokens", file=sys.stderr)
        if policy == "drop":
            dropped = set(over)
            return [row for i, row in enumerate(rows) if i not in dropped]
        fitted = list(rows)
        for i in over:
            where, example, split = rows[i]
            fitted[i] = (
                where,
                replace(example, prompt=_cut_left(tokenizer, example.prompt, limit)),
                split,
            )
        return fitted

    return fit


def _cut_left(tokenizer: PreTrainedTokenizerBase, prompt: str, limit: int) -> str:
    """The longest end of `prompt` whose encoding fits `limit` tokens (binary search on its start)."""
    low, high = 0, len(prompt)  # prompt[high:] == "" always fits
    while low < high:
        middle = (low + high) // 2
        if len(encode_prompts(tokenizer, [prompt[middle:]])[0]) <= limit:
            high = middle
        else:
            low = middle + 1
    return prompt[low:]
