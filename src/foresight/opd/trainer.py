"""What one training step reads, made once: `Trainer` and `setup(cfg)` (task, tokenizer, student
(LoRA-wrapped, FSDP2-sharded where asked), teacher or reference, optimizer, schedule, SFT cache).

The loop itself is in train.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.config import Config, OptimConfig
from foresight.errors import UserError
from foresight.lora import trainable_parameters, wrap_student
from foresight.models import load_model, load_tokenizer, paired_teacher
from foresight.opd.attention import cpu_attention_for
from foresight.opd.completions import TeacherCompletions
from foresight.opd.distributed import shard_student
from foresight.opd.host_memory import reuse_freed_memory
from foresight.opd.rms_norm import cpu_norms_for
from foresight.tasks import Task, load_task


@dataclass
class Trainer:
    """Everything a step reads, made once by `setup`."""

    cfg: Config
    task: Task
    student: PreTrainedModel
    teacher: PreTrainedModel | None  # opd: scores every token; sft from teacher: writes completions
    reference: PreTrainedModel | None  # rl with loss.kl_coef > 0: the frozen starting student
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    teacher_cache: TeacherCompletions | None  # sft from teacher: completions cached in the run

    def scored_against(self) -> PreTrainedModel | None:
        """The frozen model scored beside the student: the teacher (opd) or the reference (rl)."""
        return self.teacher if self.cfg.train.method == "opd" else self.reference


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
    torch.manual_seed(cfg.train.seed)  # anything not driven by an explicit generator
    resumed_from = student_dir
    student_dir = student_dir or cfg.model.student
    # A LoRA checkpoint holds only the adapter: tokenizer and base weights come from model.student.
    weights_dir = cfg.model.student if cfg.lora.enabled else student_dir
    tokenizer = load_tokenizer(weights_dir, "student", cfg.model.chat_template)
    # Student weights stay float32 (AdamW's updates at lr ~1e-6 vanish in bfloat16 weights);
    # model.dtype=bfloat16 runs its forward passes under autocast instead (see `compute`).
    student = load_model(
        weights_dir,
        "student",
        "float32",
        cfg.model.device,
        cfg.model.gradient_checkpointing,
    )
    cpu_attention_for(student)  # float32 attention, compiled (attention.py)
    cpu_norms_for(student)  # compiled RMSNorm forward and backward (rms_norm.py)
    if cfg.lora.enabled:  # only the adapters train (lora.py)
        student = wrap_student(student, cfg.lora, resumed_from)
    student = shard_student(student)  # FSDP2 under torchrun; unchanged in one process
    teacher = reference = None
    if cfg.train.method == "opd" or (
        cfg.train.method == "sft" and cfg.train.sft_source == "teacher"
    ):
        if cfg.model.teacher is None:
            raise UserError(
                f"train.method {cfg.train.method} here needs a teacher; set model.teacher "
                "to a model folder."
            )
        teacher = frozen(
            load_model(
                cfg.model.teacher, "teacher", cfg.model.teacher_dtype, cfg.model.teacher_device
            )
        )
        cpu_attention_for(teacher)
        teacher_tokenizer = load_tokenizer(cfg.model.teacher, "teacher", cfg.model.chat_template)
        # Read through model.vocab_map when the teacher has another vocabulary (vocab.py).
        teacher = paired_teacher(
            tokenizer, teacher_tokenizer, student, teacher, cfg.model.vocab_map
        )
    if cfg.train.method == "rl" and cfg.loss.kl_coef > 0:
        reference = frozen(load_model(cfg.model.student, "student", "float32", cfg.model.device))
        cpu_attention_for(reference)
    if any(
        model.device.type == "cpu" for model in (student, teacher, reference) if model is not None
    ):
        reuse_freed_memory()  # large per-step CPU tensors are not faulted in again every step
    optimizer = torch.optim.AdamW(
        trainable_parameters(student),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.train.steps))
    cache = (
        TeacherCompletions(cfg.train.out_dir)
        if teacher is not None and cfg.train.method == "sft"
        else None
    )
    return Trainer(cfg, task, student, teacher, reference, tokenizer, optimizer, scheduler, cache)


def frozen(model: PreTrainedModel) -> PreTrainedModel:
    model.requires_grad_(False)
    return model.eval()
