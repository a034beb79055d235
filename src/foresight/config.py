"""Typed configuration: the root `Config` of the sections (config_sections.py), the rules that span
two sections, strict YAML loading and `--set` overrides.

A YAML file holds values only. Unknown keys, wrong types and out-of-range values are rejected at load
time, before any model is built, with a `UserError` naming the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from foresight.config_sections import (
    LOSS_KINDS,
    DynamicsConfig,
    EffOPDConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    Section,
    TaskConfig,
    TrainConfig,
)
from foresight.errors import UserError


class Config(Section):
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    effopd: EffOPDConfig = EffOPDConfig()
    dynamics: DynamicsConfig = DynamicsConfig()
    lora: LoraConfig = LoraConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_default_loss(cls, raw: Any) -> Any:
        """An unset loss.kind becomes the method's default, so the saved config names it."""
        if not isinstance(raw, dict):
            return raw
        train, loss = raw.get("train") or {}, raw.get("loss") or {}
        method = train.get("method", "opd") if isinstance(train, dict) else train.method
        if isinstance(loss, dict) and loss.get("kind") is None and method in LOSS_KINDS:
            return {**raw, "loss": {**loss, "kind": LOSS_KINDS[method][0]}}
        return raw

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        kinds = LOSS_KINDS[self.train.method]
        if self.loss.kind not in kinds:
            raise ValueError(
                f"loss.kind '{self.loss.kind}' does not fit train.method '{self.train.method}'; "
                f"use {' or '.join(kinds)} (or leave loss.kind unset for the method's default)"
            )
        self._lora_and_teacher_prompt_agree()
        self._vocab_map_needs_sampled_tokens()
        if self.train.micro_batches > self.rollout.prompts_per_step:
            raise ValueError("train.micro_batches cannot exceed rollout.prompts_per_step")
        if self.effopd.enabled and self.effopd.signal == "kl" and self.train.method != "opd":
            raise ValueError("effopd.signal 'kl' needs a teacher, so train.method must be 'opd'")
        if self.rollout.group_size > 1 and self.train.method != "rl":
            raise ValueError("rollout.group_size > 1 is for train.method 'rl' (GRPO) only")
        if self.train.method == "rl" and self.rollout.group_size < 2:
            raise ValueError(
                "train.method 'rl' needs rollout.group_size >= 2 (a group of one has "
                "zero advantage)"
            )
        if any(m <= 0 for m in self.effopd.multipliers):
            raise ValueError("effopd.multipliers must all be positive")
        if self.loss.kl_coef > 0 and self.train.method != "rl":
            raise ValueError("loss.kl_coef is the RL penalty; set it only with train.method 'rl'")
        return self

    def _vocab_map_needs_sampled_tokens(self) -> None:
        if self.model.vocab_map is None:
            return
        # Across vocabularies only log p_T of the sampled token is defined (see vocab.py).
        if self.train.method != "opd" or self.loss.kind != "sampled_rkl":
            raise ValueError(
                "model.vocab_map works with train.method 'opd' and loss.kind 'sampled_rkl' only "
                "(a full-vocabulary divergence is undefined across vocabularies)"
            )
        if self.eval.teacher_kl or (self.effopd.enabled and self.effopd.signal == "kl"):
            raise ValueError(
                "model.vocab_map needs eval.teacher_kl: false and no effopd.signal 'kl' (both are "
                "full-vocabulary KLs, undefined across vocabularies)"
            )

    def _lora_and_teacher_prompt_agree(self) -> None:
        if self.lora.enabled and self.effopd.enabled:
            # EffOPD extrapolates the full attention/MLP weights, which LoRA keeps frozen.
            raise ValueError("effopd extrapolates full weights, so it cannot run with lora.enabled")
        if self.task.teacher_prompt_template is None:
            return
        if self.train.method != "opd":
            raise ValueError("task.teacher_prompt_template needs train.method 'opd'")
        if self.eval.teacher_kl or (self.effopd.enabled and self.effopd.signal == "kl"):
            # Those KLs score the plain prompt under the teacher, not the privileged one.
            raise ValueError(
                "task.teacher_prompt_template needs eval.teacher_kl: false and no effopd.signal "
                "'kl'"
            )


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3, 1e-4, true)."""
    if "=" not in assignment:
        raise UserError(f"Override '{assignment}' has no '='; write it as --set section.key=value.")
    dotted, text = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"Override '{assignment}' goes through a non-section key '{key}'.")
    try:
        node[keys[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(
            f"Override '{assignment}' has a value that is not valid YAML; quote or fix it."
        ) from None


def describe_error(err: ValidationError, source: str) -> str:
    """One sentence for the first pydantic error: which key, what is wrong, how to fix it."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'; remove it or fix its spelling."
    if first["type"] == "value_error":  # our own cross-field checks already name the keys
        return f"{source}: {first['msg'].removeprefix('Value error, ')}; fix the config and rerun."
    return f"{source}: '{where}' is invalid ({first['msg']}); correct the value and rerun."


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or the defaults when path is None), apply overrides and validate it."""
    raw: dict[str, Any] = {}
    if path is not None:
        if Path(path).is_dir():
            raise UserError(f"Config {path} is a folder; pass the path of a YAML file.")
        if not Path(path).is_file():
            raise UserError(f"Config file {path} does not exist; pass the path of a YAML file.")
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; save the config as UTF-8.") from None
        except yaml.YAMLError as exc:
            raise UserError(
                f"{path} is not valid YAML ({exc.__class__.__name__}); fix it."
            ) from None
        if not isinstance(raw, dict):
            raise UserError(f"{path} must hold a mapping of sections; see configs/tiny.yaml.")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(describe_error(err, str(path or "config"))) from None


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (written to the run folder and to every checkpoint)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
