"""The one training loop, shared by every method: `train(cfg)` owns set-up, the loop, evaluation,
logging, checkpoints and resume; `train_step` is one optimizer step; `setup` (trainer.py) loads what
a step reads.

Methods differ only in where completions come from (completions.py) and which loss scores them:
  opd -- the student samples; the teacher scores every token; reverse KL (sampled-token or full-vocab)
  rl  -- GRPO: G samples per prompt, verifier rewards, group-normalized advantages, PPO-clip,
         optional k3 KL penalty to the starting model
  sft -- worked solutions or cached teacher samples, teacher-forced; cross-entropy (`prepare` uses it)

Run: foresight train configs/tiny.yaml --set train.steps=20
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from foresight.checkpoint import (
    init_run_dir,
    load_trainer_state,
    resume_point,
    save_checkpoint,
    set_rng_state,
)
from foresight.config import Config
from foresight.effopd.search import EffOPD, make_validator
from foresight.evaluate import evaluate
from foresight.log import RunLogger
from foresight.opd.completions import (
    StepBatch,
    TeacherCompletions,
    sft_batch,
    step_examples,
    stream_seed,
    student_batch,
)
from foresight.opd.distributed import (
    SilentLogger,
    barrier,
    check_config,
    current_ranks,
    full_value,
    gathered,
    init_from_env,
    is_sharded,
    load_optimizer_state,
    local_anchor,
    mean_over_ranks,
    on_rank_devices,
    rank_share,
    save_sharded_checkpoint,
    sharded_validator,
    sum_over_ranks,
)
from foresight.opd.loss import (
    clipped_policy_loss,
    group_advantages,
    k3_kl,
    masked_sum_loss,
    sampled_token_loss,
)
from foresight.opd.rollout import Rollout
from foresight.opd.scoring import TokenScores, score_tokens, teacher_hidden_states
from foresight.opd.trainer import Trainer, setup  # noqa: F401  (setup: re-exported for callers)


def make_batch(t: Trainer, step: int) -> StepBatch:
    """The step's completions (see completions.py): student samples, solutions or teacher samples."""
    examples = rank_share(step_examples(t.task, t.cfg, step))  # this rank's prompts (all in one)
    if t.cfg.train.method == "sft":
        return sft_batch(t.task, t.tokenizer, examples, t.cfg, step, t.teacher, t.teacher_cache)
    with gathered(t.student):  # rows stop at EOS at different times on different ranks
        return student_batch(t.student, t.tokenizer, t.task, examples, t.cfg, step)


def micro_batch_loss(
    t: Trainer,
    rollout: Rollout,
    advantages: torch.Tensor | None,
    frozen_hidden: torch.Tensor | None,
    n_tokens: torch.Tensor,
) -> tuple[torch.Tensor, TokenScores]:
    """Loss of one micro-batch, already divided by the step's token count (accumulation-safe)."""
    loss_cfg, method = t.cfg.loss, t.cfg.train.method
    # rl and sft need only the sampled tokens' log-probs; opd uses the configured divergence.
    kind = loss_cfg.kind if method == "opd" else "sampled_rkl"
    scores = score_tokens(
        t.student,
        rollout,
        t.scored_against(),
        kind,
        loss_cfg.beta,
        loss_cfg.chunk_tokens,
        frozen_hidden,
        loss_cfg.teacher_topk,
    )
    device, dtype = scores.student_logprobs.device, scores.student_logprobs.dtype
    # (B, T-1): position t predicts ids[:, t+1], so the mask of ids shifts by one.
    mask = rollout.completion_mask[:, 1:].to(device, dtype)
    if method == "sft":
        return masked_sum_loss(-scores.student_logprobs, mask, n_tokens), scores
    if method == "rl":
        # One advantage per completion, shared by its tokens: (B,) -> (B, T-1).
        per_token_advantages = advantages.to(device)[:, None].expand_as(scores.student_logprobs)
        loss = clipped_policy_loss(
            scores.student_logprobs, per_token_advantages, mask, n_tokens, loss_cfg.clip_eps
        )
        if scores.teacher_logprobs is not None:  # the reference model's, for the KL penalty
            penalty = k3_kl(scores.student_logprobs, scores.teacher_logprobs)
            loss = loss + loss_cfg.kl_coef * masked_sum_loss(penalty, mask, n_tokens)
        return loss, scores
    if kind == "sampled_rkl":
        loss = sampled_token_loss(
            scores.student_logprobs, scores.teacher_logprobs, mask, n_tokens, loss_cfg.clip_eps
        )
        return loss, scores
    return masked_sum_loss(scores.divergence, mask, n_tokens), scores


def compute(t: Trainer) -> torch.autocast:
    """bfloat16 autocast for the student's forward passes when model.dtype asks for it."""
    return torch.autocast(
        t.student.device.type, dtype=torch.bfloat16, enabled=t.cfg.model.dtype == "bfloat16"
    )


def train_step(t: Trainer, step: int) -> dict[str, float]:
    """One optimizer step: rollout -> teacher scoring -> student update. Returns plain floats."""
    with compute(t):
        return _train_step(t, step)


def _train_step(t: Trainer, step: int) -> dict[str, float]:
    started = time.perf_counter()
    batch = make_batch(t, step)
    rollout = batch.rollout
    rollout_s = time.perf_counter()
    target = t.scored_against()
    frozen_hidden = None
    if target is not None:  # with a teacher prompt template, over the privileged prompts
        frozen_hidden = teacher_hidden_states(target, rollout, batch.teacher_rollout)
    teacher_s = time.perf_counter()
    advantages = None
    if batch.rewards is not None:
        advantages = group_advantages(batch.rewards, t.cfg.rollout.group_size)  # (B·G,)
    mask = rollout.completion_mask[:, 1:]  # (B, T-1)
    # Token-mean over the global batch: every rank divides by all ranks' token count, and scales
    # its backward by N because FSDP averages the ranks' gradients (distributed.py).
    n_tokens = sum_over_ranks(float(mask.sum())).clamp(min=1)
    backward_scale = current_ranks().world
    # Detached tensors, read once after the loop: no host-device sync per micro-batch.
    totals: dict[str, list[torch.Tensor]] = {"loss": [], "kl_sum": []}
    t.student.train()  # the update; sampling switched to eval() inside make_batch
    for rows in torch.arange(rollout.ids.shape[0]).tensor_split(t.cfg.train.micro_batches):
        part = slice(int(rows[0]), int(rows[-1]) + 1)
        hidden_part = None if frozen_hidden is None else frozen_hidden[part]
        advantages_part = None if advantages is None else advantages[part]
        loss, scores = micro_batch_loss(
            t, rollout.rows(part), advantages_part, hidden_part, n_tokens
        )
        (loss * backward_scale).backward()
        totals["loss"].append(loss.detach())
        if scores.teacher_logprobs is not None:
            log_ratio = (scores.student_logprobs - scores.teacher_logprobs).detach()  # (b, T-1)
            totals["kl_sum"].append((log_ratio * mask[part].to(log_ratio.device)).sum())
    local = [float(torch.stack(v).double().sum()) if v else 0.0 for v in totals.values()]
    totals = dict(zip(totals, sum_over_ranks(local).tolist()))
    grad_norm = torch.nn.utils.clip_grad_norm_(
        t.student.parameters(), t.cfg.optim.grad_clip or math.inf
    )
    lr = t.scheduler.get_last_lr()[0]
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    finished = time.perf_counter()
    lengths = rollout.completion_mask.sum(1).float()  # (B,)
    stats = {
        "loss": totals["loss"],
        "rollout/len_mean": mean_over_ranks(float(lengths.mean())),
        "optim/lr": lr,
        "optim/grad_norm": float(full_value(grad_norm)),
        "time/step_s": finished - started,
        "time/rollout_s": rollout_s - started,
        "time/teacher_s": teacher_s - rollout_s,
        "time/student_s": finished - teacher_s,
        "tokens/completion": float(n_tokens),
    }
    if target is not None:  # k1 estimate of the per-token KL to the teacher (opd) or reference (rl)
        stats["kl/mean"] = totals["kl_sum"] / float(n_tokens)
    if batch.rewards is not None:
        stats["reward/mean"] = mean_over_ranks(float(batch.rewards.mean()))
    return stats


def run_eval(t: Trainer) -> dict[str, float]:
    with gathered(t.student):
        if not current_ranks().main:
            return {}  # rank 0 evaluates the gathered model alone; the others go on
        return _evaluate(t)


def _evaluate(t: Trainer) -> dict[str, float]:
    cfg = t.cfg
    return evaluate(
        t.student,
        t.tokenizer,
        t.task,
        cfg.eval.split,
        cfg.eval.n_prompts,
        cfg.rollout.max_new_tokens,
        cfg.eval.batch_size,
        teacher=t.teacher if cfg.eval.teacher_kl else None,
        sampled=cfg.eval.sampled,
        seed=cfg.train.seed,
    )


def is_checkpoint_step(cfg: Config, step: int) -> bool:
    return (
        step % cfg.train.checkpoint_every == 0
        or step in cfg.train.checkpoint_at
        or step == cfg.train.steps
    )


def make_effopd(t: Trainer) -> EffOPD | None:
    """The EffOPD hook, when enabled; its validation prompts are fixed for the run."""
    cfg = t.cfg
    if not cfg.effopd.enabled:
        return None
    examples = t.task.sample("train", cfg.effopd.n_prompts, stream_seed(cfg.train.seed, 0, 2))
    validator = make_validator(
        cfg.effopd.signal,
        t.task,
        t.tokenizer,
        examples,
        cfg.rollout.max_new_tokens,
        cfg.train.seed,
        t.teacher,
    )
    if is_sharded(t.student):
        validator = sharded_validator(validator)
    return EffOPD(cfg.effopd, t.student, validator)


def trainer_state(t: Trainer, effopd: EffOPD | None) -> dict:
    state = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict()}
    if effopd is not None:
        state["effopd"] = effopd.state_dict()
    return state


def save(t: Trainer, effopd: EffOPD | None, cfg: Config, step: int) -> None:
    """Checkpoint `step`; under FSDP2, rank 0 writes the gathered full state (distributed.py)."""
    if not is_sharded(t.student):
        state = trainer_state(t, effopd)
        save_checkpoint(cfg.train.out_dir, step, t.student, t.tokenizer, cfg, state)
        return
    effopd_state = effopd.state_dict() if effopd is not None else None
    save_sharded_checkpoint(
        cfg.train.out_dir, step, t.student, t.tokenizer, cfg, t.optimizer, t.scheduler, effopd_state
    )


def restore(t: Trainer, effopd: EffOPD | None, checkpoint: Path) -> None:
    """Optimizer, scheduler, RNG and EffOPD state; under FSDP2 each rank cuts out its shards."""
    state = load_trainer_state(checkpoint)
    load_optimizer_state(t.student, t.optimizer, state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if effopd is not None:
        effopd.load_state_dict(state["effopd"])
        effopd.anchor = local_anchor(t.student, effopd.anchor)


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Run (or resume) a training run; returns the run folder."""
    threads_before = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    created_group = init_from_env(cfg.model.device)  # under torchrun: join the process group
    try:
        return _train(cfg, resume, overwrite)
    finally:
        torch.set_num_threads(threads_before)
        if created_group:
            torch.distributed.destroy_process_group()  # a library call leaves the process as it found it


def _train(cfg: Config, resume: bool, overwrite: bool) -> Path:
    # Everything that can reject the input runs before the run folder is touched.
    ranks = current_ranks()
    start_step, checkpoint = resume_point(cfg.train.out_dir, cfg, resume, overwrite)
    if ranks.world > 1:
        check_config(cfg, ranks)
    t = setup(on_rank_devices(cfg, ranks), student_dir=checkpoint)
    if ranks.main:
        init_run_dir(cfg.train.out_dir, cfg, overwrite)
    barrier()  # the folder exists (and --overwrite emptied it) before any rank reads it
    if t.teacher_cache is not None:  # re-read: --overwrite may just have emptied the folder
        t.teacher_cache = TeacherCompletions(cfg.train.out_dir)
    effopd = make_effopd(t)
    if checkpoint is not None:
        restore(t, effopd, checkpoint)
    logger = (
        RunLogger(cfg.train.out_dir, cfg.log, start_step, cfg.train.steps)
        if ranks.main
        else SilentLogger()
    )
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
                save(t, effopd, cfg, step)
    finally:
        logger.close()
    return Path(cfg.train.out_dir)
