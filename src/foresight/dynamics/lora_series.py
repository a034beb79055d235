"""Read a LoRA checkpoint (peft's adapter folder) as full weights W_base + ΔW, ΔW = B·A·scale.

A LoRA run's checkpoints hold only adapters. `LoraFolder` presents one as the model folder it
stands for: the same tensor names and shapes as the base, each adapted matrix read as
W_base + ΔW (float64, so that the analysis's W_t − W_base gives back ΔW to float64 rounding rather
than float32's) and every other tensor as the base's own. So `collect`, the metrics and the probes
read a LoRA series exactly like a series of full checkpoints, with no peft import and without
building any model.

scale = lora_alpha / r (or lora_alpha / sqrt(r) with use_rslora), as peft's merge uses it; the
update of a Linear is B (out, R) @ A (R, in), transposed for fan_in_fan_out (GPT-2 Conv1D) and for
embeddings (peft stores lora_embedding_A as (R, vocab) and lora_embedding_B as (H, R)).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from foresight.checkpoint import ADAPTER_CONFIG, is_lora_checkpoint
from foresight.dynamics.reading import ModelFolder
from foresight.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft's saved key: <prefix><module path>.lora_A.weight (the adapter's name is dropped on save).
_FACTOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.weight)?$")  # fmt: skip


def open_checkpoint(path: Path, base: ModelFolder) -> ModelFolder | LoraFolder:
    """A checkpoint folder as full weights: read directly, or merged from its LoRA adapter."""
    return LoraFolder(path, base) if is_lora_checkpoint(path) else ModelFolder(path)


@dataclass(frozen=True)
class Factors:
    """Where one adapted matrix's factors are stored, and how they combine."""

    a_key: str
    b_key: str
    scale: float
    transposed: bool  # ΔW = (B @ A).T: embeddings and fan_in_fan_out (Conv1D) weights


def adapter_scale(config: dict) -> float:
    """lora_alpha / r, or lora_alpha / sqrt(r) for rank-stabilised LoRA (peft's `scaling`)."""
    rank, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _check_supported(path: Path, config: dict) -> None:
    """UserError for adapters whose update is not B·A·scale with one scale for every module."""
    unsupported = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "bias": config.get("bias", "none") != "none" or bool(config.get("lora_bias")),
    }
    if found := [key for key, bad in unsupported.items() if bad]:
        raise UserError(
            f"{path}: the adapter sets {', '.join(found)}, so its update is not B·A·alpha/r alone; "
            "merge it with peft's merge_and_unload, save full checkpoints and analyze those."
        )


class LoraFolder:
    """A LoRA checkpoint read like a `ModelFolder` of full weights (see the module docstring)."""

    def __init__(self, path: Path, base: ModelFolder):
        self.path = Path(path)
        self.base = base
        self.shapes = dict(base.shapes)  # the same tensors as the base, by construction
        config = json.loads((self.path / ADAPTER_CONFIG).read_text())
        _check_supported(self.path, config)
        self.weights = self.path / ADAPTER_WEIGHTS
        if not self.weights.is_file():
            raise UserError(
                f"{self.path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; save the adapter "
                "with peft's save_pretrained (safetensors)."
            )
        self.factors = self._factors(config)

    def _factors(self, config: dict) -> dict[str, Factors]:
        """Base tensor name -> the adapter keys of its A and B factors."""
        by_module: dict[str, dict[str, str]] = {}
        with safe_open(self.weights, framework="pt") as handle:
            keys = list(handle.keys())
        for key in keys:
            if key.endswith(".base_layer.weight"):
                # peft also saves the frozen base of an adapted embedding (in case the vocabulary
                # was resized); it is the base's own tensor, so ΔW is still B·A·scale alone.
                continue
            match = _FACTOR.match(key)
            if match is None:
                raise UserError(
                    f"{self.weights} holds {key}, which is not a LoRA factor; analyze a plain LoRA "
                    "adapter or merged full checkpoints."
                )
            by_module.setdefault(match["module"], {})[match["kind"]] = key
        scale = adapter_scale(config)
        factors = {}
        for module, kinds in by_module.items():
            name = f"{module}.weight"
            if name not in self.base.shapes:
                raise UserError(
                    f"{self.path} adapts {module}, which the base {self.base.path} lacks; pass the "
                    "base model the adapter was trained on."
                )
            embedding = "embedding_A" in kinds
            a_kind, b_kind = ("embedding_A", "embedding_B") if embedding else ("A", "B")
            if set(kinds) != {a_kind, b_kind}:
                raise UserError(f"{self.weights}: {module} lacks one of its two LoRA factors.")
            transposed = embedding or bool(config.get("fan_in_fan_out"))
            factors[name] = Factors(kinds[a_kind], kinds[b_kind], scale, transposed)
        return factors

    def _tensor(self, key: str) -> torch.Tensor:
        with safe_open(self.weights, framework="pt") as handle:
            return handle.get_tensor(key).to(torch.float64)

    def delta(self, name: str) -> torch.Tensor | None:
        """ΔW = B·A·scale of one base tensor in float64, in the base tensor's layout; None if the
        adapter leaves it alone."""
        factors = self.factors.get(name)
        if factors is None:
            return None
        lora_a = self._tensor(factors.a_key)  # (R, in)
        lora_b = self._tensor(factors.b_key)  # (out, R)
        delta_w = (lora_b @ lora_a) * factors.scale  # (out, in)
        delta_w = delta_w.T if factors.transposed else delta_w
        if tuple(delta_w.shape) != self.base.shapes[name]:
            raise UserError(
                f"{self.path}: the update of {name} has shape {list(delta_w.shape)} but the base "
                f"tensor {list(self.base.shapes[name])}; pass the adapter's own base model."
            )
        if not bool(torch.isfinite(delta_w).all()):
            raise UserError(
                f"{self.path}: the adapter of {name} holds NaN or inf values; leave this "
                "checkpoint out."
            )
        return delta_w

    def read(self, name: str) -> torch.Tensor:
        """W_base + ΔW (float64) for an adapted tensor; the base tensor (float32) otherwise."""
        base_weight = self.base.read(name)
        delta_w = self.delta(name)
        return base_weight if delta_w is None else base_weight.to(torch.float64) + delta_w
