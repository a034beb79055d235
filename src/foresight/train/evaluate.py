"""Held-out evaluation: greedy pass@1, one-sample accuracy at temperature 1, reverse KL to a teacher.

Also the scores other parts call on modified weights: `task_scorer` for the analysis suite's
functional probes, and `effopd_validator` for EffOPD's search.
Evaluation prompts are a fixed, deterministic slice of the task's val or test split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.config_sections import TaskConfig
from foresight.effopd.search import Validator
from foresight.effopd.validators import kl_validator, reward_validator
from foresight.log import progress
from foresight.models import check_pair, load_model, load_tokenizer
from foresight.tasks import Example, Task, load_task
from foresight.templates import uses_chat
from foresight.train.rollout import Rollout, decode_completions, sample
from foresight.train.scoring import score_tokens

Scorer = Callable[[torch.nn.Module], dict[str, float]]


def accuracy(task: Task, completions: list[str], answers: list[str]) -> float:
    return sum(task.verify(c, a) for c, a in zip(completions, answers)) / len(answers)


@torch.no_grad()
def reverse_kl_sum(
    student: PreTrainedModel, teacher: PreTrainedModel, rollout: Rollout
) -> tuple[float, int]:
    """Exact full-vocabulary KL(p_S ‖ p_T) summed over the rollout's completion tokens, and their count."""
    scores = score_tokens(student, rollout, teacher, kind="reverse_kl")
    mask = rollout.completion_mask[:, 1:].to(scores.divergence.device)  # (B, T-1)
    return float((scores.divergence * mask).sum()), int(mask.sum())


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    split: str,
    n_prompts: int,
    max_new_tokens: int,
    batch_size: int,
    teacher: PreTrainedModel | None = None,
    sampled: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """eval/accuracy (greedy pass@1), eval/accuracy_sampled (T=1), eval/kl_reverse (needs teacher)."""
    was_training = model.training
    model.eval()
    examples = task.sample(split, n_prompts, 0)
    generator = torch.Generator().manual_seed(seed)
    correct_greedy, correct_sampled, kl_total, kl_tokens = 0.0, 0.0, 0.0, 0
    with progress("generating", len(examples)) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            prompts, answers = [e.prompt for e in batch], [e.answer for e in batch]
            greedy = sample(model, tokenizer, prompts, max_new_tokens, 1.0, None, greedy=True)
            correct_greedy += accuracy(task, decode_completions(tokenizer, greedy), answers) * len(
                batch
            )
            if sampled or teacher is not None:
                drawn = sample(model, tokenizer, prompts, max_new_tokens, 1.0, generator)
                drawn_texts = decode_completions(tokenizer, drawn)
                correct_sampled += accuracy(task, drawn_texts, answers) * len(batch)
                if teacher is not None:
                    batch_total, batch_tokens = reverse_kl_sum(model, teacher, drawn)
                    kl_total, kl_tokens = kl_total + batch_total, kl_tokens + batch_tokens
            bar.advance(len(batch))
    model.train(was_training)
    metrics = {"eval/accuracy": correct_greedy / len(examples)}
    if sampled:
        metrics["eval/accuracy_sampled"] = correct_sampled / len(examples)
    if teacher is not None:
        metrics["eval/kl_reverse"] = kl_total / max(kl_tokens, 1)
    return metrics


def task_scorer(
    task_cfg: TaskConfig,
    model_dir: Path,
    n_prompts: int,
    teacher_dir: Path | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 256,
) -> Scorer:
    """A scorer for the analysis probes: accuracy (and KL to the teacher) of whatever weights the
    given model currently holds, on the first n_prompts of the task's test split."""
    task = load_task(task_cfg)
    tokenizer = load_tokenizer(model_dir, "student")
    teacher = teacher_tokenizer = None
    if teacher_dir is not None:
        teacher = load_model(teacher_dir, "teacher")
        teacher_tokenizer = load_tokenizer(teacher_dir, "teacher")
    checked: list[torch.nn.Module] = []  # the models already checked against the teacher

    def score(model: torch.nn.Module) -> dict[str, float]:
        if teacher is not None and not any(model is seen for seen in checked):
            check_pair(tokenizer, teacher_tokenizer, model, teacher)  # the scored model's head
            checked.append(model)
        return evaluate(
            model,
            tokenizer,
            task,
            "test",
            n_prompts,
            max_new_tokens,
            batch_size,
            teacher=teacher,
            sampled=False,
        )

    return score


def effopd_validator(
    signal: str,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_new_tokens: int,
    seed: int,
    student: PreTrainedModel,
    teacher: PreTrainedModel | None = None,
) -> Validator:
    """EffOPD's validation score V for `foresight train` (effopd.signal), from effopd/validators.py.

    accuracy: the mean of the task's reward (a verifier's 0/1: the share verified) over one
      sample (T=1) per prompt, the paper's V.
    kl: minus the full-vocabulary reverse KL to the teacher on completions sampled once per search
      from the student's W_t.
    Prompts are encoded as the rollouts encode them: rendered with the chat template when chat is
    on (a text prompt as one user turn, a conversation as its turns; templates.py), else raw text
    after BOS.
    """

    def messages(example: Example) -> list[dict[str, str]]:
        turns = [("user", example.prompt)] if isinstance(example.prompt, str) else example.prompt
        return [{"role": role, "content": content} for role, content in turns]

    chat = uses_chat(tokenizer)
    prompts = [messages(e) if chat else e.prompt for e in examples]
    if signal == "accuracy":

        def verified(completion: str, example: Example) -> float:
            return float(task.verify(completion, example.answer))

        return reward_validator(
            prompts, verified, tokenizer, max_new_tokens=max_new_tokens, seed=seed, rows=examples
        )
    return kl_validator(
        prompts, teacher, student, tokenizer, max_new_tokens=max_new_tokens, seed=seed
    )
