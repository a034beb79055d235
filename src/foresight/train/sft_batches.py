"""SFT's completions: the task's worked solutions, or the teacher's samples (cached in the run
folder, so a resumed run trains on exactly the same data without generating it again). The on-policy
methods' completions (opd, rl) are sampled in rollout.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.config import Config
from foresight.errors import UserError
from foresight.tasks import Example, Task
from foresight.train.rollout import (
    Rollout,
    StepBatch,
    decode_completions,
    ended_with_eos,
    sample,
    stream_seed,
    teacher_forced,
)
from foresight.train.scoring import own_dtype


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
        # Accepted: a reward above 0 (True for a verifier; a python: reward may be any float).
        kept = torch.tensor(
            [task.verify(c, e.answer) > 0 for c, e in zip(completions, examples)]
        )  # (B,)
        rollout = Rollout(
            rollout.ids,
            rollout.attention_mask,
            rollout.position_ids,
            rollout.completion_mask * kept[:, None].long(),
            rollout.prompt_width,
        )
    return StepBatch(rollout, None)
