"""LoRA students (peft): wrap the student so that only low-rank adapters train, and load them back.

With `lora.enabled` the student's linear layers named in `lora.target_modules` get adapters
W x + (alpha/R)·B A x (peft's `get_peft_model`); the base weights are frozen and only A and B reach
the optimizer. A checkpoint of such a run holds the adapter exactly as peft writes it
(`adapter_model.safetensors`, `adapter_config.json`, whose `base_model_name_or_path` names the
base) instead of a full copy of the model: the base is the run's `model.student`. So a checkpoint
costs the adapter's size, resume reloads base + adapter bit for bit, and the analysis suite reads
each checkpoint's merged update ΔW = B·A·alpha/R (foresight.dynamics.lora_series).

Run: foresight train configs/real.yaml   (a LoRA student on SmolLM2-135M-Instruct)
"""

from __future__ import annotations

from pathlib import Path

import peft
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.checkpoint import is_lora_checkpoint
from foresight.config import Config
from foresight.config_sections import LoraConfig
from foresight.errors import UserError
from foresight.models import load_model, load_tokenizer


def wrap_student(
    student: PreTrainedModel, cfg: LoraConfig, adapter_dir: Path | None = None
) -> peft.PeftModel:
    """The student with LoRA adapters; `adapter_dir` (a LoRA checkpoint) supplies their weights.

    Without `adapter_dir` the adapters start as peft initialises them: A random (from torch's
    global generator, seeded by the caller), B = 0, so the wrapped model computes exactly the base.
    """
    if adapter_dir is not None:
        if not is_lora_checkpoint(adapter_dir):
            raise UserError(
                f"{adapter_dir} holds no adapter_config.json, so it is not a LoRA checkpoint; "
                "resume a run trained with lora.enabled, or disable lora for this run."
            )
        return peft.PeftModel.from_pretrained(student, adapter_dir, is_trainable=True)
    lora_config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
    )
    try:
        return peft.get_peft_model(student, lora_config)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in student.named_modules()} - {""})
        raise UserError(
            f"lora.target_modules {list(cfg.target_modules)} do not fit the student ({exc}); "
            f"name leaf modules it has, e.g. {', '.join(names[:12])}."
        ) from None


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: all of a full student, only the adapters of LoRA."""
    return [param for param in model.parameters() if param.requires_grad]


def load_student(cfg: Config, checkpoint: Path | None = None) -> torch.nn.Module:
    """The student of a run for evaluation: model.student, with a LoRA checkpoint's adapter on top
    when lora is enabled (a full checkpoint otherwise). Float32 on model.device, in eval mode."""
    if not cfg.lora.enabled and checkpoint is not None:
        return load_model(checkpoint, "student", "float32", cfg.model.device).eval()
    revision = cfg.model.student_revision  # model.student may be a Hub id
    base = load_model(cfg.model.student, "student", "float32", cfg.model.device, revision=revision)
    if checkpoint is None:
        return base.eval()
    model = peft.PeftModel.from_pretrained(base, checkpoint, is_trainable=False)
    return model.eval()


def load_for_eval(folder: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a model folder, or of one of our LoRA checkpoints (its config.yaml
    names the base, whose tokenizer it uses), for evaluation."""
    from foresight.config import load_config

    folder = Path(folder)
    if not is_lora_checkpoint(folder):
        return load_model(folder, "student"), load_tokenizer(folder, "student")
    if not (folder / "config.yaml").is_file():
        raise UserError(
            f"{folder} holds a LoRA adapter without foresight's config.yaml, so its base is unknown; "
            "merge it into its base (peft merge_and_unload) and evaluate the merged folder."
        )
    cfg = load_config(folder / "config.yaml")
    tokenizer = load_tokenizer(
        cfg.model.student, "student", cfg.model.chat_template, cfg.model.student_revision
    )
    return load_student(cfg, folder), tokenizer
