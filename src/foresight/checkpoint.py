"""Run folders and checkpoints: atomic HF-folder checkpoints with training state, listing, resume.

A run folder holds `config.yaml` (the resolved config), `metrics.jsonl`, `tb/` and
`checkpoints/step-XXXXXX/`. Each checkpoint is an ordinary Hugging Face model folder plus
`trainer_state.pt` (optimizer, scheduler, RNG and extra state), `foresight.json` (step, config) and,
written last, `manifest.json` (every file's size and SHA-256). It is written under a temporary name
and renamed, so a crash never leaves a half checkpoint that looks whole; readers ignore any folder
whose name is not exactly `step-XXXXXX`, and resume takes the newest checkpoint whose files match
its manifest. Claiming, locking and safe deletion of run folders are in run_folder.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from foresight.config import Config, config_to_yaml, load_config
from foresight.errors import UserError
from foresight.log import say
from foresight.run_folder import LOCK_FILE, RUN_MARKER, check_removable, clear, write_marker

CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"
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
    """Write checkpoint `step` atomically: build it under a temporary name, manifest last, rename.

    `state_dict` replaces the model's own (FSDP2: the full weights gathered to rank 0's CPU). A full
    disk ends in a UserError naming the folder and the space needed; the run stays resumable from
    its previous checkpoint."""
    final = checkpoint_dir(run_dir, step)
    temporary = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        _write(temporary, step, model, tokenizer, cfg, trainer_state, state_dict)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        if not _out_of_space(exc):
            raise
        earlier = list_checkpoints(run_dir)
        size = sum(p.stat().st_size for p in earlier[-1][1].rglob("*")) if earlier else 0
        need = f", one checkpoint takes about {size // 2**20 + 1} MB" if size else ""
        raise UserError(
            f"The disk holding {final.parent} is full (free: {_free_mb(final.parent)} MB{need}); "
            "free space, then rerun with --resume."
        ) from None
    if final.exists():
        # Only reachable when a resumed run re-saves a step; the new state is the same step's.
        shutil.rmtree(final)
    os.rename(temporary, final)
    return final


def _write(folder: Path, step, model, tokenizer, cfg, trainer_state, state_dict) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, folder / STATE_FILE)
    (folder / "foresight.json").write_text(
        json.dumps({"step": step, "config": cfg.model_dump(mode="json")}, indent=1)
    )
    (folder / "config.yaml").write_text(config_to_yaml(cfg))
    _fsync_tree(folder)
    # The manifest is written last: a checkpoint without one (or not matching it) never counts.
    (folder / MANIFEST).write_text(json.dumps(_file_digests(folder), indent=1))
    _fsync_tree(folder)


def _fsync_tree(folder: Path) -> None:
    """Flush the files to disk before the rename makes the checkpoint visible."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _out_of_space(exc: BaseException) -> bool:
    # safetensors and torch.save report a full disk as their own errors, with ENOSPC's text inside.
    text = str(exc)
    return (
        getattr(exc, "errno", None) == errno.ENOSPC
        or "No space left" in text
        or ("unexpected pos" in text)
    )


def _free_mb(folder: Path) -> int:
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free // 2**20


def _file_digests(folder: Path) -> dict[str, dict[str, int | str]]:
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digests[str(path.relative_to(folder))] = {
                "size": path.stat().st_size,
                "sha256": digest.hexdigest(),
            }
    return digests


def damage(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a missing, resized or changed file), or None."""
    manifest = Path(checkpoint) / MANIFEST
    if not manifest.is_file():
        return f"it has no {MANIFEST}"
    try:
        expected = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"its {MANIFEST} is unreadable"
    for name, record in expected.items():
        path = Path(checkpoint) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{name} has {path.stat().st_size} bytes instead of {record['size']}"
    actual = _file_digests(Path(checkpoint))
    changed = [name for name in expected if actual[name]["sha256"] != expected[name]["sha256"]]
    return f"{changed[0]} does not match its checksum" if changed else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    # weights_only=False: the state holds Python RNG tuples and numpy arrays we wrote ourselves.
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)


def _is_fresh(run_dir: Path) -> bool:
    return not run_dir.exists() or all(p.name == LOCK_FILE for p in run_dir.iterdir())


def resume_point(
    run_dir: Path, cfg: Config, resume: bool, overwrite: bool
) -> tuple[int, Path | None]:
    """Check the run folder can be used (writes nothing); return (start step, checkpoint or None).

    A new run never writes into a folder that holds another run: that needs --resume (continue it)
    or --overwrite (delete it first, only if foresight wrote it). Resuming needs the same config,
    except for the step budget, the run folder's own path and evaluation/logging settings; it
    starts from the newest complete checkpoint and says why it skipped any newer one.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass only one of them.")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"train.out_dir {run_dir} is a file; set train.out_dir to a folder.")
    if overwrite:
        check_removable(run_dir, RUN_MARKER)
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
    for step, checkpoint in reversed(list_checkpoints(run_dir)):
        reason = damage(checkpoint)
        if reason is None:
            say(f"resuming {run_dir} from step {step}")  # an info line: -q hides it
            return step, checkpoint
        print(f"skipping checkpoint step {step} of {run_dir}: {reason}", file=sys.stderr)
    return 0, None


def init_run_dir(run_dir: Path, cfg: Config, overwrite: bool) -> None:
    """Fill the claimed run folder (emptied first with --overwrite, the held lock kept): its marker
    and the resolved config."""
    run_dir = Path(run_dir)
    if overwrite:
        clear(run_dir, keep=LOCK_FILE)
    write_marker(run_dir)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete the `step-XXXXXX.tmp-PID` folders a killed process left (the caller holds the lock,
    so no live process is writing them)."""
    for leftover in (Path(run_dir) / "checkpoints").glob("step-*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


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
        # out_dir only locates the run: a moved or renamed run folder resumes.
        for key in ("steps", "checkpoint_every", "checkpoint_at", "threads", "out_dir"):
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
