"""The plan of `foresight compare`: which runs (method x seed), with which configs, checkpoints when.

A compare YAML is an ordinary training config (model, task, rollout, ... sections shared by every
run) plus one `compare:` section:

    compare:
      out_dir: runs/compare
      seeds: [0, 1, 2]
      steps: 150
      methods:                       # each key is a train.method; each gets its own lr
        opd: {lr: 1.0e-3, set: [loss.kind=reverse_kl]}
        rl:  {lr: 1.0e-4, set: [rollout.group_size=8]}
        sft: {lr: 1.0e-3}            # SFT on cached teacher samples
      quick: {seeds: [0], steps: 40}  # what --quick changes
      lr_scales: [1, 0.1]            # optional: learning-rate regimes, one full comparison each

Every run gets the same prompts per step, the same step budget and the same checkpoint schedule:
`early_checkpoints` checkpoints spread over the first 30% of training, then one every 10%.

Learning-rate regimes: each scale multiplies every method's lr (after any `optim.lr` override),
and the whole comparison (methods x seeds) runs once per scale. With the default `[1.0]` the runs
sit in OUT/runs/<method>-s<seed>, as they always have; with any other list, each regime has its
own folder, OUT/lr-x<scale>/runs/<method>-s<seed> (lr-x1, lr-x0.1, ...).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from foresight.config import Config, apply_override, describe_error
from foresight.config_sections import Section
from foresight.errors import UserError

Method = Literal["opd", "rl", "sft"]
EARLY_PROGRESS = 0.3  # the paper's "first 30% of training"

# What each method needs beyond `train.method` before the user's own `set` overrides.
METHOD_DEFAULTS: dict[str, list[str]] = {
    "opd": [],
    "rl": ["loss.kind=grpo"],
    "sft": ["loss.kind=cross_entropy", "train.sft_source=teacher"],  # sequence-level distillation
}


class MethodSpec(Section):
    lr: float = Field(gt=0, description="This method's learning rate.")
    set: list[str] = Field([], description="Config overrides for this method's runs (a.b=value).")


class QuickSpec(Section):
    seeds: list[int] = Field([0], min_length=1, description="Seeds of the --quick version.")
    steps: int = Field(40, ge=1, description="Optimizer steps of the --quick version.")
    set: list[str] = Field([], description="Extra overrides of the --quick version (a.b=value).")


class CompareConfig(Section):
    out_dir: Path = Field(Path("runs/compare"), description="Folder of runs, analyses and report.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Seeds; each method runs each.")
    steps: int = Field(150, ge=1, description="Optimizer steps of every run.")
    early_checkpoints: int = Field(
        10, ge=8, description="Checkpoints within the first 30% of training (at least 8)."
    )
    methods: dict[Method, MethodSpec] = Field(description="The methods compared, by train.method.")
    probes: bool = Field(True, description="Run the functional probes on every run.")
    quick: QuickSpec = QuickSpec()
    lr_scales: list[float] = Field(
        [1.0],
        min_length=1,
        description="Learning-rate regimes: each multiplies every method's lr; the whole "
        "comparison runs once per scale.",
    )

    @model_validator(mode="after")
    def _needs_opd_and_another(self) -> CompareConfig:
        if "opd" not in self.methods or len(self.methods) < 2:
            raise ValueError("compare.methods needs 'opd' and at least one of 'rl' and 'sft'")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("compare.seeds repeats a seed; list each seed once")
        if bad := [scale for scale in self.lr_scales if scale <= 0]:
            raise ValueError(
                f"compare.lr_scales has {bad[0]:g}, but a learning-rate multiplier must be > 0; "
                "list positive numbers such as [1, 0.1]"
            )
        # Compared by folder name: 0.1 and 0.1000001 would share lr-x0.1.
        if len({regime_folder(s) for s in self.lr_scales}) != len(self.lr_scales):
            raise ValueError("compare.lr_scales repeats a scale; list each scale once")
        return self


@dataclass(frozen=True)
class PlannedRun:
    method: str
    seed: int
    cfg: Config
    scale: float  # the learning-rate regime: cfg.optim.lr is the method's lr times this
    regime_dir: Path  # the regime's folder: OUT itself with lr_scales [1.0], else OUT/lr-x<scale>

    @property
    def label(self) -> str:
        return f"{self.method}-s{self.seed}"


def regime_folder(scale: float) -> str:
    """The folder name of a learning-rate regime: lr-x1, lr-x0.1, lr-x1e-05."""
    return f"lr-x{scale:g}"


def parse_lr_scales(text: str) -> list[float]:
    """The multipliers of `--lr-scales 1,0.1`; UserError unless each is a positive number."""
    try:
        scales = [float(part) for part in text.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(0 < scale < math.inf for scale in scales):
        raise UserError(
            f"--lr-scales takes comma-separated positive multipliers such as 1,0.1, not '{text}'."
        )
    return scales


def checkpoint_schedule(steps: int, early: int) -> list[int]:
    """`early` steps spread evenly over the first 30% of training, then every 10%, and the last.

    Raises UserError when the first 30% has fewer than `early` distinct steps.
    """
    early_end = math.floor(EARLY_PROGRESS * steps)
    if early_end < early:
        raise UserError(
            f"compare.steps={steps} leaves {early_end} steps in the first 30% of training, fewer "
            f"than the {early} early checkpoints; raise compare.steps to at least "
            f"{math.ceil(early / EARLY_PROGRESS)}."
        )
    first = sorted({round(early_end * (i + 1) / early) for i in range(early)})
    later = [round(steps * tenth / 10) for tenth in range(4, 11)]
    return sorted(set(first) | {s for s in later if s > early_end})


def split_compare_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the shared training sections, the raw `compare` section) of a compare YAML file."""
    if not Path(path).is_file():
        raise UserError(f"Compare config {path} does not exist; pass e.g. configs/compare.yaml.")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({exc.__class__.__name__}); fix it.") from None
    if not isinstance(raw, dict) or "compare" not in raw:
        raise UserError(f"{path} has no 'compare:' section; see configs/compare.yaml.")
    compare = raw.pop("compare")
    return raw, compare if isinstance(compare, dict) else {}


def load_plan(
    path: Path, quick: bool = False, overrides: list[str] = ()
) -> tuple[CompareConfig, list[PlannedRun]]:
    """The compare settings and every run's validated config: regime-major, then seed-major.

    overrides (`a.b=value`) apply to every run, after the method's own settings (so
    `optim.lr=...` sets every method's rate); `compare.x=value` ones change the compare section.
    Method, seed, steps, checkpoint schedule and run folder are the plan's and cannot be overridden;
    each regime's scale multiplies the lr that results.
    """
    shared, raw_compare = split_compare_yaml(path)
    tree = {"compare": raw_compare}
    for assignment in overrides:
        if assignment.startswith("compare."):
            apply_override(tree, assignment)
    try:
        compare = CompareConfig.model_validate(tree["compare"])
    except ValidationError as err:
        raise UserError(describe_error(err, f"{path} (compare)")) from None
    seeds, steps, extra = compare.seeds, compare.steps, []
    if quick:
        seeds, steps, extra = compare.quick.seeds, compare.quick.steps, compare.quick.set
    schedule = checkpoint_schedule(steps, compare.early_checkpoints)
    out_dir = (
        compare.out_dir.with_name(compare.out_dir.name + "-quick") if quick else compare.out_dir
    )
    user = [o for o in overrides if not o.startswith("compare.")]
    runs = []
    for scale in compare.lr_scales:
        # [1.0] keeps the layout of a comparison without regimes, so its folder stays valid.
        regime_dir = out_dir if compare.lr_scales == [1.0] else out_dir / regime_folder(scale)
        for seed in seeds:
            for method, spec in compare.methods.items():
                raw = copy.deepcopy(shared)
                # The plan's structure comes last: no override can move a run or change its method.
                forced = [
                    f"train.method={method}",
                    f"train.seed={seed}",
                    f"train.steps={steps}",
                    f"train.checkpoint_every={steps}",
                    f"train.checkpoint_at={schedule}",
                    f"train.out_dir={regime_dir / 'runs' / f'{method}-s{seed}'}",
                ]
                own = [*METHOD_DEFAULTS[method], f"optim.lr={spec.lr}", *spec.set, *extra]
                for assignment in [*own, *user, *forced]:
                    apply_override(raw, assignment)
                cfg = _validate(raw, f"{path} ({method} runs)")
                if scale != 1.0:  # the validated lr: a user's `optim.lr=1e-4` is a string in raw
                    apply_override(raw, f"optim.lr={cfg.optim.lr * scale!r}")
                    cfg = _validate(raw, f"{path} ({method} runs at lr x{scale:g})")
                runs.append(PlannedRun(method, seed, cfg, scale, regime_dir))
    return compare.model_copy(update={"out_dir": out_dir}), runs


def _validate(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(describe_error(err, source)) from None
