"""The one training loop, shared by every method: `train(cfg)` owns set-up, the loop, evaluation,
logging, checkpoints and resume; `train_step` is one optimizer step.

Methods differ only in where completions come from and which loss scores them:
  opd -- the student samples; the teacher scores every token; reverse KL (sampled-token or full-vocab)
  sft -- the task's worked solutions, teacher-forced; cross-entropy (used by `prepare` too)

Run: foresight train configs/tiny.yaml --set train.steps=20
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.checkpoint import (
    init_run_dir,
    load_trainer_state,
    resume_point,
    save_checkpoint,
    set_rng_state,
)
from foresight.config import Config, OptimConfig
from foresight.effopd.search import EffOPD, make_validator
from foresight.errors import UserError
from foresight.evaluate import evaluate
from foresight.log import RunLogger
from foresight.models import check_pair, load_model, load_tokenizer
from foresight.opd.loss import masked_sum_loss, sampled_token_loss
from foresight.opd.rollout import Rollout, sample, teacher_forced
from foresight.opd.scoring import TokenScores, score_tokens, teacher_hidden_states
from foresight.tasks import Task, load_task


@dataclass
class Trainer:
    """Everything a step reads, made once by `setup`."""

    cfg: Config
    task: Task
    student: PreTrainedModel
    teacher: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def stream_seed(seed: int, step: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, step, stream): 0 = data order, 1 = sampling."""
    return (seed * 1_000_003 + step) * 4 + stream


def lr_lambda(cfg: OptimConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def setup(cfg: Config, student_dir: Path | None = None) -> Trainer:
    """Load task, models and optimizer; `student_dir` overrides model.student (used by resume)."""
    task = load_task(cfg.task)
    student_dir = student_dir or cfg.model.student
    tokenizer = load_tokenizer(student_dir, "student")
    student = load_model(student_dir, "student", cfg.model.dtype, cfg.model.device)
    teacher = None
    if cfg.train.method == "opd":
        if cfg.model.teacher is None:
            raise UserError("OPD needs a teacher; set model.teacher to a model folder.")
        teacher = load_model(cfg.model.teacher, "teacher", cfg.model.teacher_dtype,
                             cfg.model.teacher_device).eval()
        teacher.requires_grad_(False)
        check_pair(tokenizer, load_tokenizer(cfg.model.teacher, "teacher"), student, teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.train.steps))
    return Trainer(cfg, task, student, teacher, tokenizer, optimizer, scheduler)


def make_rollout(t: Trainer, step: int) -> Rollout:
    """The step's completions: the student's own samples (opd) or the worked solutions (sft)."""
    examples = t.task.sample("train", t.cfg.rollout.prompts_per_step, stream_seed(t.cfg.train.seed, step, 0))
    prompts = [e.prompt for e in examples]
    if t.cfg.train.method == "sft":
        if not all(e.solution for e in examples):
            raise UserError("SFT needs a 'solution' on every training example; add it to the JSONL file.")
        return teacher_forced(t.tokenizer, prompts, [e.solution for e in examples])
    generator = torch.Generator().manual_seed(stream_seed(t.cfg.train.seed, step, 1))
    t.student.eval()  # sampling: no dropout, no autograd
    rollout = sample(t.student, t.tokenizer, prompts, t.cfg.rollout.max_new_tokens,
                     t.cfg.rollout.temperature, generator)
    t.student.train()
    return rollout


def micro_batch_loss(t: Trainer, rollout: Rollout, teacher_hidden: torch.Tensor | None,
                     n_tokens: torch.Tensor) -> tuple[torch.Tensor, TokenScores]:
    """Loss of one micro-batch, already divided by the step's token count (accumulation-safe)."""
    loss_cfg = t.cfg.loss
    scores = score_tokens(t.student, rollout, t.teacher, loss_cfg.kind, loss_cfg.beta,
                          loss_cfg.chunk_tokens, teacher_hidden)
    mask = rollout.completion_mask[:, 1:].to(scores.student_logprobs.dtype)  # (B, T-1) predicts ids[:, 1:]
    if t.cfg.train.method == "sft":
        return masked_sum_loss(-scores.student_logprobs, mask, n_tokens), scores
    if loss_cfg.kind == "sampled_rkl":
        loss = sampled_token_loss(scores.student_logprobs, scores.teacher_logprobs, mask, n_tokens,
                                  loss_cfg.clip_eps)
        return loss, scores
    return masked_sum_loss(scores.divergence, mask, n_tokens), scores


def train_step(t: Trainer, step: int) -> dict[str, float]:
    """One optimizer step: rollout -> teacher scoring -> student update. Returns plain floats."""
    started = time.perf_counter()
    rollout = make_rollout(t, step)
    rollout_s = time.perf_counter()
    teacher_hidden = teacher_hidden_states(t.teacher, rollout) if t.teacher is not None else None
    teacher_s = time.perf_counter()
    mask = rollout.completion_mask[:, 1:]  # (B, T-1)
    n_tokens = mask.sum().clamp(min=1)
    totals = {"loss": 0.0, "kl_sum": 0.0}
    for rows in torch.arange(rollout.ids.shape[0]).tensor_split(t.cfg.train.micro_batches):
        part = slice(int(rows[0]), int(rows[-1]) + 1)
        hidden_part = None if teacher_hidden is None else teacher_hidden[part]
        loss, scores = micro_batch_loss(t, rollout.rows(part), hidden_part, n_tokens)
        loss.backward()
        totals["loss"] += loss.item()
        if scores.teacher_logprobs is not None:
            log_ratio = (scores.student_logprobs - scores.teacher_logprobs).detach()  # (b, T-1)
            totals["kl_sum"] += float((log_ratio * mask[part]).sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(t.student.parameters(), t.cfg.optim.grad_clip or math.inf)
    lr = t.scheduler.get_last_lr()[0]
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    finished = time.perf_counter()
    lengths = rollout.completion_mask.sum(1).float()  # (B,)
    stats = {
        "loss": totals["loss"], "rollout/len_mean": float(lengths.mean()),
        "optim/lr": lr, "optim/grad_norm": float(grad_norm), "time/step_s": finished - started,
        "time/rollout_s": rollout_s - started, "time/teacher_s": teacher_s - rollout_s,
        "time/student_s": finished - teacher_s, "tokens/completion": float(n_tokens),
    }
    if t.teacher is not None:
        stats["kl/mean"] = totals["kl_sum"] / float(n_tokens)  # k1 estimate of per-token reverse KL
    return stats


def run_eval(t: Trainer) -> dict[str, float]:
    cfg = t.cfg
    return evaluate(t.student, t.tokenizer, t.task, cfg.eval.split, cfg.eval.n_prompts,
                    cfg.rollout.max_new_tokens, cfg.eval.batch_size,
                    teacher=t.teacher if cfg.eval.teacher_kl else None, sampled=cfg.eval.sampled,
                    seed=cfg.train.seed)


def is_checkpoint_step(cfg: Config, step: int) -> bool:
    return step % cfg.train.checkpoint_every == 0 or step in cfg.train.checkpoint_at or step == cfg.train.steps


def make_effopd(t: Trainer) -> EffOPD | None:
    """The EffOPD hook, when enabled; its validation prompts are fixed for the run."""
    cfg = t.cfg
    if not cfg.effopd.enabled:
        return None
    examples = t.task.sample("train", cfg.effopd.n_prompts, stream_seed(cfg.train.seed, 0, 2))
    validator = make_validator(cfg.effopd.signal, t.task, t.tokenizer, examples,
                               cfg.rollout.max_new_tokens, cfg.train.seed, t.teacher)
    return EffOPD(cfg.effopd, t.student, validator)


def trainer_state(t: Trainer, effopd: EffOPD | None) -> dict:
    state = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict()}
    if effopd is not None:
        state["effopd"] = effopd.state_dict()
    return state


def restore(t: Trainer, effopd: EffOPD | None, checkpoint: Path) -> None:
    state = load_trainer_state(checkpoint)
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if effopd is not None:
        effopd.load_state_dict(state["effopd"])


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Run (or resume) a training run; returns the run folder."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # Everything that can reject the input runs before the run folder is touched.
    start_step, checkpoint = resume_point(cfg.train.out_dir, cfg, resume, overwrite)
    t = setup(cfg, student_dir=checkpoint)
    init_run_dir(cfg.train.out_dir, cfg, overwrite)
    effopd = make_effopd(t)
    if checkpoint is not None:
        restore(t, effopd, checkpoint)
    logger = RunLogger(cfg.train.out_dir, cfg.log, start_step, cfg.train.steps)
    try:
        if start_step == 0:
            logger.log(0, run_eval(t))
        for step in range(start_step + 1, cfg.train.steps + 1):
            stats = train_step(t, step)
            if effopd is not None:
                stats |= effopd.on_step_end(step, t.student)
            if step % cfg.eval.every == 0 or step == cfg.train.steps:
                stats |= run_eval(t)
            logger.log(step, stats)
            if is_checkpoint_step(cfg, step):
                save_checkpoint(cfg.train.out_dir, step, t.student, t.tokenizer, cfg,
                                trainer_state(t, effopd))
    finally:
        logger.close()
    return Path(cfg.train.out_dir)
