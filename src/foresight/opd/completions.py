"""Where a step's completions come from: the only place the three methods differ before the loss.

  opd -- the student samples one completion per prompt (on-policy)
  rl  -- the student samples G completions per prompt; the task's verifier gives each a reward
  sft -- the task's worked solutions, or the teacher's samples (cached in the run folder so that a
         resumed run trains on exactly the same data without generating it again)
Prompts and sampling seeds come from (run seed, step) only, so every step is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.config import Config
from foresight.errors import UserError
from foresight.opd.distributed import rank_seed
from foresight.opd.rollout import (
    Rollout,
    decode_completions,
    encode_prompts,
    ended_with_eos,
    left_pad,
    positions,
    sample,
    teacher_forced,
)
from foresight.opd.scoring import own_dtype
from foresight.tasks import Example, Task


def stream_seed(seed: int, step: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, step, stream):
    0 = data order, 1 = student sampling, 2 = EffOPD validation prompts, 3 = teacher sampling."""
    return (seed * 1_000_003 + step) * 4 + stream


@dataclass(frozen=True)
class StepBatch:
    rollout: Rollout
    rewards: torch.Tensor | None  # (B·G,) verifier rewards in {0, 1}, rl only
    # Self-distillation: the same completions after the teacher's privileged prompts.
    teacher_rollout: Rollout | None = None


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


class TeacherCompletions:
    """Teacher samples per step, appended to RUN/teacher_completions.jsonl and read back on resume."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "teacher_completions.jsonl"
        self.by_step: dict[int, tuple[list[str], list[bool]]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: that step is sampled again
                self.by_step[record["step"]] = (record["completions"], record["ended"])

    def get(
        self,
        step: int,
        teacher: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        cfg: Config,
    ) -> tuple[list[str], list[bool]]:
        """The teacher's completions for this step's prompts, and whether each ended at EOS."""
        if step not in self.by_step:
            generator = torch.Generator().manual_seed(stream_seed(cfg.train.seed, step, 3))
            with own_dtype(teacher.device):  # the teacher samples in model.teacher_dtype
                rollout = sample(
                    teacher,
                    tokenizer,
                    prompts,
                    cfg.rollout.max_new_tokens,
                    cfg.rollout.temperature,
                    generator,
                )
            self.by_step[step] = (
                decode_completions(tokenizer, rollout),
                ended_with_eos(tokenizer, rollout),
            )
            record = {
                "step": step,
                "completions": self.by_step[step][0],
                "ended": self.by_step[step][1],
            }
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        return self.by_step[step]


def step_examples(task: Task, cfg: Config, step: int) -> list[Example]:
    return task.sample("train", cfg.rollout.prompts_per_step, stream_seed(cfg.train.seed, step, 0))


def student_batch(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[Example],
    cfg: Config,
    step: int,
) -> StepBatch:
    """On-policy samples; for rl, G per prompt (rows grouped by prompt) with their rewards."""
    group = cfg.rollout.group_size
    prompts = [e.prompt for e in examples for _ in range(group)]
    # Under torchrun each rank samples its own prompts from its own generator (distributed.py).
    generator = torch.Generator().manual_seed(rank_seed(stream_seed(cfg.train.seed, step, 1)))
    student.eval()  # sampling: no dropout, no autograd
    rollout = sample(
        student, tokenizer, prompts, cfg.rollout.max_new_tokens, cfg.rollout.temperature, generator
    )
    student.train()
    if cfg.task.teacher_prompt_template is not None:  # opd only (config check)
        privileged = teacher_prompts(cfg.task.teacher_prompt_template, prompts)
        return StepBatch(rollout, None, privileged_rollout(tokenizer, rollout, privileged))
    if cfg.train.method != "rl":
        return StepBatch(rollout, None)
    answers = [e.answer for e in examples for _ in range(group)]
    completions = decode_completions(tokenizer, rollout)
    verified = [float(task.verify(c, a)) for c, a in zip(completions, answers)]
    rewards = torch.tensor(verified)  # (B·G,)
    return StepBatch(rollout, rewards)


def sft_batch(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    cfg: Config,
    step: int,
    teacher: PreTrainedModel | None,
    cache: TeacherCompletions | None,
) -> StepBatch:
    prompts = [e.prompt for e in examples]
    if cfg.train.sft_source == "solutions":
        if not all(e.solution for e in examples):
            raise UserError(
                "SFT on solutions needs a 'solution' on every training example; add it to "
                "the JSONL file or set train.sft_source=teacher."
            )
        return StepBatch(teacher_forced(tokenizer, prompts, [e.solution for e in examples]), None)
    completions, ended = cache.get(step, teacher, tokenizer, prompts, cfg)
    rollout = teacher_forced(tokenizer, prompts, completions, ended)
    if cfg.train.sft_verified_only:
        # Rejected rows stay in the batch with no trained token, so shapes never depend on luck.
        kept = torch.tensor(
            [task.verify(c, e.answer) for c, e in zip(completions, examples)]
        )  # (B,)
        rollout = Rollout(
            rollout.ids,
            rollout.attention_mask,
            rollout.position_ids,
            rollout.completion_mask * kept[:, None].long(),
            rollout.prompt_width,
        )
    return StepBatch(rollout, None)
