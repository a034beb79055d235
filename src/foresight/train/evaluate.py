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

from foresight.config import TaskConfig
from foresight.models import check_pair, load_model, load_tokenizer
from foresight.tasks import Example, Task, load_task
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


def mean_reverse_kl(student: PreTrainedModel, teacher: PreTrainedModel, rollout: Rollout) -> float:
    """KL(p_S ‖ p_T) per completion token, averaged over the rollout's tokens."""
    total, count = reverse_kl_sum(student, teacher, rollout)
    return total / max(count, 1)


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
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompts, answers = [e.prompt for e in batch], [e.answer for e in batch]
        greedy = sample(model, tokenizer, prompts, max_new_tokens, 1.0, None, greedy=True)
        correct_greedy += accuracy(task, decode_completions(tokenizer, greedy), answers) * len(
            batch
        )
        if sampled or teacher is not None:
            drawn = sample(model, tokenizer, prompts, max_new_tokens, 1.0, generator)
            correct_sampled += accuracy(task, decode_completions(tokenizer, drawn), answers) * len(
                batch
            )
            if teacher is not None:
                batch_total, batch_tokens = reverse_kl_sum(model, teacher, drawn)
                kl_total, kl_tokens = kl_total + batch_total, kl_tokens + batch_tokens
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
) -> Callable[[int], Callable[[torch.nn.Module], float]]:
    """EffOPD's validation score V (effopd/search.py `Validator`): step -> score(model).

    accuracy: share of verified one-sample (T=1) completions, the paper's V. All candidates of one
      search draw from the same seed (common random numbers), which removes part of the noise.
    kl: minus the full-vocabulary reverse KL to the teacher, teacher-forced on completions sampled
      once per search from the student's current weights W_t: dense, needs no verifier, far less
      noisy.
    """
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]

    def begin(step: int) -> Callable[[torch.nn.Module], float]:
        search_seed = (seed * 1_000_003 + step) % 2**63
        if signal == "accuracy":

            def score(candidate: torch.nn.Module) -> float:
                generator = torch.Generator().manual_seed(search_seed)
                rollout = sample(candidate, tokenizer, prompts, max_new_tokens, 1.0, generator)
                return accuracy(task, decode_completions(tokenizer, rollout), answers)

            return score
        generator = torch.Generator().manual_seed(search_seed)
        rollout = sample(student, tokenizer, prompts, max_new_tokens, 1.0, generator)
        return lambda candidate: -mean_reverse_kl(candidate, teacher, rollout)

    return begin
