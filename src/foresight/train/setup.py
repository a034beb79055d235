"""What one training step reads, made once: `Trainer` and `setup(cfg, dist)` (task, tokenizer,
student (LoRA-wrapped, FSDP2-sharded under torchrun), teacher or reference, optimizer, schedule).

The loop itself is in loop.py.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AttentionInterface, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from foresight.config import Config
from foresight.config_sections import OptimConfig
from foresight.errors import UserError
from foresight.hub import ModelSource, locate_model
from foresight.lora import trainable_parameters, wrap_student
from foresight.models import load_model, load_tokenizer, paired_teacher
from foresight.tasks import Task, load_task
from foresight.train.distributed import Distributed
from foresight.train.loss import OBJECTIVES, Objective
from foresight.train.rollout import prompt_fit
from foresight.train.sft_batches import TeacherCompletions


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
    objective: Objective  # loss.OBJECTIVES[(train.method, loss.kind)]
    dist: Distributed  # a no-op in one process
    teacher_cache: TeacherCompletions | None = None  # sft from teacher: the run's cached samples
    nonfinite_steps: int = 0  # steps whose loss or gradient norm was not finite (loop.finite_step)

    @property
    def frozen(self) -> PreTrainedModel | None:
        """The frozen model scored beside the student: the teacher (opd) or the reference (rl)."""
        return self.teacher if self.cfg.train.method == "opd" else self.reference

    def compute(self) -> torch.autocast:
        """bfloat16 autocast for the student's passes when model.dtype asks for it; the frozen
        models compute in their own dtype (scoring.own_dtype)."""
        device_type = self.student.device.type
        return torch.autocast(device_type, torch.bfloat16, self.cfg.model.dtype == "bfloat16")


def lr_lambda(cfg: OptimConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def setup(cfg: Config, dist: Distributed | None = None, student_dir: Path | None = None) -> Trainer:
    """Load task, models and optimizer; `student_dir` overrides model.student (used by resume)."""
    dist = dist or Distributed()
    torch.manual_seed(cfg.train.seed)  # anything not driven by an explicit generator
    resumed_from = student_dir
    # A LoRA checkpoint holds only the adapter: tokenizer and base weights come from model.student.
    from_config = student_dir is None or cfg.lora.enabled
    weights_dir = cfg.model.student if from_config else student_dir
    revision = cfg.model.student_revision if from_config else None  # a checkpoint is a folder
    tokenizer = load_tokenizer(weights_dir, "student", cfg.model.chat_template, revision)
    teacher_source = None
    if uses_teacher(cfg) and cfg.model.teacher is not None:
        teacher_source = locate_model(cfg.model.teacher, "teacher", cfg.model.teacher_revision)
    context = context_length(locate_model(weights_dir, "student", revision), teacher_source)
    room = context - cfg.rollout.max_new_tokens
    if room < 1:
        raise UserError(
            f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens}) fills the model's whole "
            f"context ({context} tokens); lower it."
        )
    task = load_task(cfg.task, prompt_fit(tokenizer, room, cfg.task.too_long))
    # Student weights stay float32 (AdamW's updates at lr ~1e-6 vanish in bfloat16 weights);
    # model.dtype=bfloat16 runs its forward passes under autocast instead (Trainer.compute).
    student = load_model(
        weights_dir,
        "student",
        "float32",
        cfg.model.device,
        cfg.model.gradient_checkpointing,
        revision,
    )
    if cfg.model.dtype == "bfloat16":
        float32_attention_on_cpu(student)
    if cfg.lora.enabled:  # only the adapters train (lora.py)
        student = wrap_student(student, cfg.lora, resumed_from)
    student = dist.shard(student)  # FSDP2 under torchrun; unchanged in one process
    teacher = reference = None
    if uses_teacher(cfg):
        if cfg.model.teacher is None:
            raise UserError(
                f"train.method {cfg.train.method} here needs a teacher; set model.teacher "
                "to a model folder."
            )
        teacher = frozen(
            load_model(
                cfg.model.teacher,
                "teacher",
                cfg.model.teacher_dtype,
                cfg.model.teacher_device,
                revision=cfg.model.teacher_revision,
            )
        )
        teacher_tokenizer = load_tokenizer(
            cfg.model.teacher, "teacher", cfg.model.chat_template, cfg.model.teacher_revision
        )
        # Read through model.vocab_map when the teacher has another vocabulary (vocab.py).
        teacher = paired_teacher(
            tokenizer, teacher_tokenizer, student, teacher, cfg.model.vocab_map
        )
    if cfg.train.method == "rl" and cfg.loss.kl_coef > 0:
        reference = frozen(
            load_model(
                cfg.model.student,
                "student",
                "float32",
                cfg.model.device,
                revision=cfg.model.student_revision,
            )
        )
    optimizer = torch.optim.AdamW(
        trainable_parameters(student),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.train.steps))
    objective = OBJECTIVES[(cfg.train.method, cfg.loss.kind)]
    trainer = Trainer(
        cfg, task, student, teacher, reference, tokenizer, optimizer, scheduler, objective, dist
    )
    if teacher is not None and cfg.train.method == "sft":  # train() re-reads it after --overwrite
        trainer.teacher_cache = TeacherCompletions(cfg.train.out_dir)
    return trainer


FLOAT32_SDPA = "foresight_float32_sdpa"


def float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """The library's SDPA attention with query, key and value in float32 and autocast off, the
    result cast back to the value's dtype (bfloat16 under autocast)."""
    with torch.autocast("cpu", enabled=False):
        attended, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return attended.to(value.dtype), weights


def float32_attention_on_cpu(student: PreTrainedModel) -> None:
    """A bfloat16 student on a CPU attends in float32: torch's CPU SDPA kernel is several times
    slower in bfloat16, backward above all (benchmarks/throughput.py --attention measures it).
    Registered with the library's AttentionInterface and the sdpa masks; not saved in checkpoints."""
    if student.device.type != "cpu" or student.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(FLOAT32_SDPA, float32_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLOAT32_SDPA, sdpa_mask)  # sdpa's own padding masks
    student.set_attn_implementation(FLOAT32_SDPA)


def uses_teacher(cfg: Config) -> bool:
    """Whether the run reads model.teacher: opd scores with it, sft from teacher samples it."""
    method = cfg.train.method
    return method == "opd" or (method == "sft" and cfg.train.sft_source == "teacher")


def context_length(*sources: ModelSource | None) -> int:
    """The shortest max_position_embeddings of the given models' config.json (a folder's, or the
    cached copy of a Hub model's); a huge number if none states one."""
    lengths = []
    for source in filter(None, sources):
        fields = json.loads(source.config_file.read_text())
        text_fields = fields.get("text_config") or {}
        found = fields.get("max_position_embeddings") or text_fields.get("max_position_embeddings")
        lengths.append(found or sys.maxsize)
    return min(lengths, default=sys.maxsize)


def frozen(model: PreTrainedModel) -> PreTrainedModel:
    model.requires_grad_(False)
    return model.eval()
