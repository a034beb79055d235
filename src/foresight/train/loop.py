"""The one training loop, shared by every method: `train(cfg)` owns the loop, evaluation, logging,
checkpoints and resume; `train_step` is one optimizer step; `setup` (setup.py) loads what it reads.

Methods differ only in where completions come from and which loss scores them (loss.OBJECTIVES):
  opd -- the student samples; the teacher scores every token; reverse KL (sampled-token or full-vocab)
  rl  -- GRPO: G samples per prompt, verifier rewards, group-normalized advantages, PPO-clip,
         optional k3 KL penalty to the starting model
  sft -- worked solutions or cached teacher samples, teacher-forced; cross-entropy (`prepare` uses it)
One OPD step reads through five files: cli.py -> loop.py -> rollout.py -> scoring.py -> loss.py.

Run: foresight train configs/tiny.yaml --set train.steps=20
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from foresight.checkpoint import (
    init_run_dir,
    load_trainer_state,
    remove_partial_checkpoints,
    resume_point,
    set_rng_state,
)
from foresight.config import Config
from foresight.effopd.extrapolate import extrapolated_names
from foresight.effopd.search import TENSOR_STATES, EffOPD
from foresight.errors import UserError
from foresight.log import RunLogger, check_trackers
from foresight.run_folder import RunLock, holds_only_lock
from foresight.train.distributed import Distributed, grad_norm_value
from foresight.train.evaluate import effopd_validator, evaluate
from foresight.train.loss import Scores, group_advantages, masked_sum_loss
from foresight.train.rollout import (
    StepBatch,
    step_examples,
    stream_seed,
    student_batch,
    truncated_rows,
)
from foresight.train.scoring import frozen_hidden_states, score_tokens
from foresight.train.setup import Trainer, setup
from foresight.train.sft_batches import TeacherCompletions, sft_batch


def make_batch(t: Trainer, step: int) -> StepBatch:
    """The step's completions: the student's samples (opd, rl) or given ones (sft)."""
    examples = t.dist.share(step_examples(t.task, t.cfg, step))  # this rank's prompts
    if t.cfg.train.method == "sft":
        return sft_batch(t.task, t.tokenizer, examples, t.cfg, step, t.teacher, t.teacher_cache)
    seed = t.dist.seed(stream_seed(t.cfg.train.seed, step, 1))  # each rank draws its own
    with t.dist.gathered(t.student):  # rows stop at EOS at different times on different ranks
        return student_batch(t.student, t.tokenizer, t.task, examples, t.cfg, seed)


def micro_batch_loss(
    t: Trainer, batch: StepBatch, rows: slice, frozen_hidden, advantages, n_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Loss of one micro-batch, divided by the step's token count (accumulation-safe); the
    detached log-ratio to the frozen model (B, T-1) for the KL metric, when it was scored; and the
    student's entropy summed over the completion tokens (train/entropy), from the same logits."""
    objective, loss_cfg = t.objective, t.cfg.loss
    rollout = batch.rollout.rows(rows)
    scores = score_tokens(
        t.student,
        rollout,
        t.frozen if objective.scores_frozen else None,
        objective.divergence,
        loss_cfg.beta,
        loss_cfg.chunk_tokens,
        None if frozen_hidden is None else frozen_hidden[rows],
        loss_cfg.teacher_topk,
        student_entropy=True,
    )
    student_logprobs = scores.student_logprobs  # (b, T-1)
    # One advantage per completion (rl), shared by its tokens: (b,) -> (b, T-1).
    if advantages is not None:
        advantages = advantages[rows].to(student_logprobs.device)[:, None]
        advantages = advantages.expand_as(student_logprobs)
    inputs = Scores(student_logprobs, scores.teacher_logprobs, scores.divergence, advantages)
    # (b, T-1): position t predicts ids[:, t+1], so the mask of ids shifts by one.
    mask = rollout.completion_mask[:, 1:].to(student_logprobs.device, student_logprobs.dtype)
    loss = masked_sum_loss(objective.per_token(inputs, loss_cfg), mask, n_tokens)
    log_ratio = None
    if scores.teacher_logprobs is not None:
        log_ratio = (student_logprobs - scores.teacher_logprobs).detach() * mask
    return loss, log_ratio, (scores.student_entropy * mask).sum()


def train_step(t: Trainer, step: int) -> dict[str, float]:
    """One optimizer step: rollout -> frozen-model scoring -> student update. Returns plain floats."""
    started = time.perf_counter()
    t.student.eval()  # sampling: no dropout
    with t.compute():
        batch = make_batch(t, step)
    sampled = time.perf_counter()
    frozen_hidden = frozen_hidden_states(t.frozen if t.objective.scores_frozen else None, batch)
    scored = time.perf_counter()
    advantages = None
    if t.cfg.train.method == "rl":  # opd's rewards are a metric only
        advantages = group_advantages(batch.rewards, t.cfg.rollout.group_size)  # (B·G,)
    mask = batch.rollout.completion_mask[:, 1:]  # (B, T-1)
    # Token-mean over the global batch: every rank divides by all ranks' token count, and scales
    # its backward by N because FSDP averages the ranks' gradients (distributed.py).
    n_tokens = t.dist.sum(mask.sum()).clamp(min=1)
    # Detached, read once after the loop: no sync per micro-batch.
    losses, kl_sums, entropy_sums = [], [], []
    t.student.train()  # the update
    for part in torch.arange(mask.shape[0]).tensor_split(t.cfg.train.micro_batches):
        rows = slice(int(part[0]), int(part[-1]) + 1)
        with t.compute():
            loss, log_ratio, micro_entropy = micro_batch_loss(
                t, batch, rows, frozen_hidden, advantages, n_tokens
            )
        (loss * t.dist.world).backward()
        losses.append(loss.detach())
        entropy_sums.append(micro_entropy)
        if log_ratio is not None:
            kl_sums.append(log_ratio.sum())
    sampled_here = t.cfg.train.method != "sft"  # sft's completions are given, not cut by the cap
    # Completions cut at rollout.max_new_tokens without an end token.
    truncated = truncated_rows(t.tokenizer, batch.rollout).sum() if sampled_here else 0
    rows_total = mask.shape[0]
    total_loss, kl_sum, entropy_sum, truncated, rows_total = t.dist.sum(
        [_total(losses), _total(kl_sums), _total(entropy_sums), float(truncated), rows_total]
    ).tolist()
    grad_norm = grad_norm_value(
        torch.nn.utils.clip_grad_norm_(t.student.parameters(), t.cfg.optim.grad_clip or math.inf)
    )
    lr = t.scheduler.get_last_lr()[0]
    if finite_step(t, step, total_loss, grad_norm):  # else the weights stay as they were
        t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    finished = time.perf_counter()
    lengths = batch.rollout.completion_mask.sum(1).double()  # (B,)
    stats = {
        "loss": total_loss,
        "rollout/len_mean": float(t.dist.sum(lengths.mean())) / t.dist.world,
        "optim/lr": lr,
        "optim/grad_norm": grad_norm,
        "optim/nonfinite_steps": float(t.nonfinite_steps),
        "time/step_s": finished - started,
        "time/rollout_s": sampled - started,
        "time/teacher_s": scored - sampled,
        "time/student_s": finished - scored,
        "tokens/completion": float(n_tokens),
        "train/entropy": entropy_sum / float(n_tokens),
    }
    if sampled_here:
        stats["train/truncated_share"] = truncated / rows_total
    if kl_sums:  # k1 estimate of the per-token KL to the teacher (opd) or reference (rl)
        stats["kl/mean"] = kl_sum / float(n_tokens)
    if batch.rewards is not None:  # the task reward of the sampled completions (opd, rl)
        stats["reward/mean"] = float(t.dist.sum(batch.rewards.double().mean())) / t.dist.world
    return stats


def finite_step(t: Trainer, step: int, loss: float, grad_norm: float) -> bool:
    """Whether the step may update the weights: a non-finite loss or gradient norm never reaches
    the optimizer. train.on_nonfinite=stop ends the run (exit 2); skip drops the step, up to
    train.max_nonfinite times."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return True
    t.nonfinite_steps += 1
    train_cfg = t.cfg.train
    if train_cfg.on_nonfinite == "skip" and t.nonfinite_steps <= train_cfg.max_nonfinite:
        return False
    raise UserError(
        f"Step {step} has loss {loss} and gradient norm {grad_norm}, so training stopped before "
        "the optimizer touched the weights (the newest checkpoint holds the last good ones); "
        f"lower optim.lr ({t.cfg.optim.lr:g}) or set optim.grad_clip, then rerun with --resume, "
        "or set train.on_nonfinite: skip."
    )


def _total(parts: list[torch.Tensor]) -> float:
    return float(torch.stack(parts).double().sum()) if parts else 0.0


def run_eval(t: Trainer) -> dict[str, float]:
    """Held-out metrics; under torchrun rank 0 evaluates the gathered model alone."""
    cfg = t.cfg
    with t.dist.gathered(t.student):
        if not t.dist.main:
            return {}
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


def make_effopd(t: Trainer) -> EffOPD | None:
    """The EffOPD hook, when enabled; its validation prompts are fixed for the run."""
    cfg = t.cfg
    if not cfg.effopd.enabled:
        return None
    examples = t.task.sample("train", cfg.effopd.n_prompts, stream_seed(cfg.train.seed, 0, 2))
    validator = effopd_validator(
        cfg.effopd.signal,
        t.task,
        t.tokenizer,
        examples,
        cfg.rollout.max_new_tokens,
        cfg.train.seed,
        t.student,
        t.teacher,
    )

    def search_score(step: int):
        with t.dist.gathered(t.student):  # the kl signal samples from W_t here
            score = validator(step)
        return t.dist.scorer(score)

    names = extrapolated_names(t.student, cfg.effopd.modules)
    return EffOPD(cfg.effopd, t.student, names, search_score)


def is_checkpoint_step(cfg: Config, step: int) -> bool:
    return (
        step % cfg.train.checkpoint_every == 0
        or step in cfg.train.checkpoint_at
        or step == cfg.train.steps
    )


def save(t: Trainer, effopd: EffOPD | None, cfg: Config, step: int) -> None:
    """Checkpoint `step` with the user's config `cfg` (not this rank's devices); never one whose
    weights are not all finite."""
    local_bad = sum(int(not bool(torch.isfinite(p.detach()).all())) for p in t.student.parameters())
    if float(t.dist.sum([local_bad])[0]):
        raise UserError(
            f"After step {step} some weights are not finite, so no checkpoint was written (the "
            f"newest one holds the last good weights); lower optim.lr ({cfg.optim.lr:g}) and rerun "
            "with --resume."
        )
    state = {"scheduler": t.scheduler.state_dict()}
    if effopd is not None:
        state["effopd"] = effopd.state_dict()
    t.dist.save(cfg.train.out_dir, step, t.student, t.tokenizer, cfg, t.optimizer, state)


def restore(t: Trainer, effopd: EffOPD | None, checkpoint: Path) -> None:
    """Optimizer, scheduler, RNG and EffOPD state; under FSDP2 each rank cuts out its shards."""
    state = load_trainer_state(checkpoint)
    t.dist.load_optimizer(t.student, t.optimizer, state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if effopd is not None:
        saved = state["effopd"]
        effopd.load_state_dict(
            {
                key: t.dist.local_weights(t.student, value) if key in TENSOR_STATES else value
                for key, value in saved.items()
            }
        )


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Run (or resume) a training run; returns the run folder."""
    threads_before = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dist = Distributed.from_env(cfg.model.device)  # under torchrun: join the process group
    try:
        return _train(dist.check(cfg), cfg, dist, resume, overwrite)
    finally:
        torch.set_num_threads(threads_before)
        dist.close()


def _train(
    cfg: Config, saved_cfg: Config, dist: Distributed, resume: bool, overwrite: bool
) -> Path:
    # What can reject the input without loading anything runs before the run folder is touched.
    run_dir = cfg.train.out_dir
    check_trackers(cfg.log)
    start_step, checkpoint = resume_point(run_dir, saved_cfg, resume, overwrite)
    lock = RunLock(run_dir)
    if dist.main:  # claimed before anything slow: a second process on the folder exits at once
        lock.acquire()
    try:
        return _claimed(cfg, saved_cfg, dist, resume, overwrite, start_step, checkpoint, lock)
    finally:
        lock.release()


def _claimed(cfg, saved_cfg, dist, resume, overwrite, start_step, checkpoint, lock) -> Path:
    run_dir = cfg.train.out_dir
    if dist.main:
        if not resume and not overwrite and not holds_only_lock(run_dir):
            raise UserError(f"Run folder {run_dir} was just filled by another run; choose another.")
        remove_partial_checkpoints(run_dir)  # left by killed processes: we hold the lock
    try:
        t = setup(cfg, dist, student_dir=checkpoint)
    except BaseException:
        if lock.created:  # nothing was written but the lock: leave no folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if dist.main:
        init_run_dir(run_dir, saved_cfg, overwrite)  # the user's devices, not this rank's
    dist.barrier()  # the folder exists (and --overwrite emptied it) before any rank reads it
    if t.teacher is not None and cfg.train.method == "sft":  # read after --overwrite emptied it
        t.teacher_cache = TeacherCompletions(run_dir)
    effopd = make_effopd(t)
    if checkpoint is not None:
        restore(t, effopd, checkpoint)
    logger = None
    if dist.main:
        run_config = saved_cfg.model_dump(mode="json")  # what the trackers store
        logger = RunLogger(run_dir, cfg.log, start_step, cfg.train.steps, run_config)
    try:
        if start_step == 0:
            _log(logger, 0, run_eval(t))
        for step in range(start_step + 1, cfg.train.steps + 1):
            stats = train_step(t, step)
            if effopd is not None:
                stats |= effopd.on_step_end(step, t.student)
            if step % cfg.eval.every == 0 or step == cfg.train.steps:
                stats |= run_eval(t)
            _log(logger, step, stats)
            if is_checkpoint_step(cfg, step):
                save(t, effopd, saved_cfg, step)
    finally:
        if logger is not None:
            logger.close()
    return Path(run_dir)


def _log(logger: RunLogger | None, step: int, stats: dict[str, float]) -> None:
    if logger is not None:  # rank 0 alone writes metrics
        logger.log(step, stats)
