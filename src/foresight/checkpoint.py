"""Run folders and checkpoints: atomic HF-folder checkpoints with training state, listing, resume.

A run folder holds `config.yaml` (the resolved config), `metrics.jsonl`, `tb/` and
`checkpoints/step-XXXXXX/`. Each checkpoint is an ordinary Hugging Face model folder plus
`trainer_state.pt` (optimizer, scheduler, RNG and extra state) and `foresight.json` (step, config).
It is written under a temporary name and renamed, so a crash never leaves a half checkpoint that
looks whole; readers ignore any folder whose name is not exactly `step-XXXXXX`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.config import Config, config_to_yaml, load_config
from foresight.errors import UserError

CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "trainer_state.pt"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: a LoRA checkpoint holds the adapter only


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def free_run_dir(wanted: Path) -> Path:
    """`wanted`, or the first `wanted-N` that does not exist: a demo never overwrites a run."""
    candidate, index = wanted, 2
    while candidate.exists():
        candidate = wanted.with_name(f"{wanted.name}-{index}")
        index += 1
    return candidate


def is_lora_checkpoint(path: Path) -> bool:
    """Whether a folder is a peft LoRA adapter (adapter_config.json beside its weights)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, in step order (temporary folders are skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: Config,
    trainer_state: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` atomically: build it under a temporary name, then rename.

    `state_dict` replaces the model's own (FSDP2: the full weights gathered to rank 0's CPU)."""
    final = checkpoint_dir(run_dir, step)
    temporary = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary, state_dict=state_dict)
    tokenizer.save_pretrained(temporary)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, temporary / STATE_FILE)
    (temporary / "foresight.json").write_text(
        json.dumps({"step": step, "config": cfg.model_dump(mode="json")}, indent=1)
    )
    (temporary / "config.yaml").write_text(config_to_yaml(cfg))
    _fsync_tree(temporary)
    if final.exists():
        # Only reachable when a resumed run re-saves a step; the new state is the same step's.
        shutil.rmtree(final)
    os.rename(temporary, final)
    return final


def _fsync_tree(folder: Path) -> None:
    """Flush the files to disk before the rename makes the checkpoint visible."""
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    # weights_only=False: the state holds Python RNG tuples and numpy arrays we wrote ourselves.
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)


def _is_fresh(run_dir: Path) -> bool:
    return not run_dir.exists() or not any(run_dir.iterdir())


def resume_point(
    run_dir: Path, cfg: Config, resume: bool, overwrite: bool
) -> tuple[int, Path | None]:
    """Check the run folder can be used (writes nothing); return (start step, checkpoint or None).

    A new run never writes into a folder that holds another run: that needs --resume (continue it)
    or --overwrite (delete it first). Resuming needs the same config, except for the step budget and
    evaluation/logging settings.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass only one of them.")
    if not resume and not overwrite and not _is_fresh(run_dir):
        raise UserError(
            f"Run folder {run_dir} already holds files; pass --resume to continue that run, "
            "--overwrite to replace it, or set train.out_dir to a new folder."
        )
    if not resume:
        return 0, None
    if _is_fresh(run_dir):
        raise UserError(f"Nothing to resume in {run_dir}; drop --resume to start a new run there.")
    check_resumable_config(run_dir, cfg)
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else (0, None)


def init_run_dir(run_dir: Path, cfg: Config, overwrite: bool) -> None:
    """Create the run folder (emptied first with --overwrite) and write the resolved config."""
    run_dir = Path(run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))


def check_resumable_config(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UserError(
            f"{run_dir} has no config.yaml, so it is not a foresight run; pick its run folder."
        )
    saved = load_config(saved_path).model_dump(mode="json")
    given = cfg.model_dump(mode="json")
    before, now = saved["train"]["steps"], given["train"]["steps"]
    if before != now and given["optim"]["schedule"] == "cosine":
        raise UserError(
            f"train.steps changed from {before} to {now}, but the cosine schedule's learning rates "
            f"depend on train.steps, so {run_dir} would not continue the schedule it started; keep "
            f"train.steps={before}, or start a new run folder."
        )
    # What may change on resume: the step budget (not under a cosine schedule, above) and how the
    # run is watched, not what it computes.
    for config in (saved, given):
        for section in ("eval", "log", "dynamics"):
            config.pop(section)
        for key in ("steps", "checkpoint_every", "checkpoint_at", "threads"):
            config["train"].pop(key)
    if saved != given:
        changed = sorted(
            f"{s}.{k}"
            for s in saved
            for k in saved[s]
            if isinstance(saved[s], dict) and saved[s].get(k) != given[s].get(k)
        )
        raise UserError(
            f"The config differs from the one {run_dir} was started with ({', '.join(changed)}); "
            "resume with the same config or start a new run folder."
        )
