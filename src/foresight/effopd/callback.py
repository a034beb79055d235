"""EffOPD for Hugging Face trainers (transformers.Trainer, TRL's trainers): `EffOPDCallback` runs the
search after the optimizer step at the trigger steps and keeps its state in the trainer's own
checkpoints, so that a resumed run searches exactly as an uninterrupted one.

When the trainer saves checkpoint-N/, the callback writes into it the anchor
(effopd_anchor.safetensors, with the 'straight' schedule's last segment under a prefix) and, as
JSON (effopd_state.json), the search history, the step, the next search step, the EffOPD config,
the search metrics not yet logged, and the anchor file's SHA-256.

The search keeps no random state of its own: each search samples from a seed made of (seed, step)
(validators.py), under a forked RNG, so there is none to save.

Each file is written under a temporary name, synced and renamed into place; the JSON comes last and
names the anchor's digest, so a folder holds a matching pair or is refused at resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from foresight.config_sections import EffOPDConfig
from foresight.effopd.search import EffOPD, next_search_step
from foresight.errors import UserError

ANCHOR_FILE = "effopd_anchor.safetensors"
STATE_FILE = "effopd_state.json"
# Prefixes, in ANCHOR_FILE, of the 'straight' schedule's last segment and the 'average' direction's
# weight average (EffOPD.state_dict's other tensor entries) beside the anchor's own names.
PREFIXES = {"previous": "previous_segment:", "average": "average:"}


def _replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync, rename."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def save_state(folder: Path, step: int, effopd: EffOPD, pending: dict[str, float]) -> None:
    """Write EffOPD's state after `step` into the checkpoint `folder` (which must exist)."""
    tensors = dict(effopd.anchor)
    for key, prefix in PREFIXES.items():
        tensors |= {prefix + n: t for n, t in (getattr(effopd, key) or {}).items()}
    anchor = save_tensors(tensors)
    _replace(folder / ANCHOR_FILE, anchor)
    state = {
        "step": step,
        "next_search_step": next_search_step(effopd.cfg, step),
        "effopd": effopd.cfg.model_dump(mode="json"),
        "history": effopd.history,  # the multipliers, JSON object keys, come back as floats below
        "pending": pending,
        "anchor_sha256": hashlib.sha256(anchor).hexdigest(),
    }
    _replace(folder / STATE_FILE, json.dumps(state, indent=1).encode())


def load_state(folder: Path, step: int, effopd: EffOPD) -> dict[str, float]:
    """Restore `effopd` from the checkpoint `folder` of `step`; returns the metrics not yet logged."""
    state_path, anchor_path = folder / STATE_FILE, folder / ANCHOR_FILE
    if not state_path.is_file() or not anchor_path.is_file():
        raise UserError(
            f"The run resumes at step {step} but {folder} holds no EffOPD state ({STATE_FILE} and "
            f"{ANCHOR_FILE}); resume from a checkpoint saved with the EffOPD callback."
        )
    state = json.loads(state_path.read_text())
    anchor_bytes = anchor_path.read_bytes()
    if hashlib.sha256(anchor_bytes).hexdigest() != state["anchor_sha256"] or state["step"] != step:
        raise UserError(
            f"{anchor_path} does not belong to {state_path} of step {step} (damaged or copied "
            "over); resume from an intact checkpoint."
        )
    saved_cfg = EffOPDConfig.model_validate(state["effopd"])
    if saved_cfg != effopd.cfg:
        raise UserError(
            f"{folder} was saved with EffOPD settings {saved_cfg.model_dump()} but this run has "
            f"{effopd.cfg.model_dump()}; resume with the same EffOPDConfig."
        )
    tensors = load_tensors(anchor_bytes)
    saved = {
        key: {n.removeprefix(prefix): t for n, t in tensors.items() if n.startswith(prefix)}
        for key, prefix in PREFIXES.items()
    }
    anchor = {n: t for n, t in tensors.items() if not n.startswith(tuple(PREFIXES.values()))}
    strays = any(weights.keys() - anchor.keys() for weights in saved.values())
    if anchor.keys() != effopd.params.keys() or strays:
        raise UserError(
            f"The EffOPD anchor in {folder} holds other tensors than this run extrapolates; "
            "resume with the same model and extrapolated modules."
        )
    history = [_record(r) for r in state["history"]]
    others = {key: weights or None for key, weights in saved.items()}
    effopd.load_state_dict({"anchor": anchor, "history": history, **others})
    return state["pending"]


def _record(saved: dict[str, Any]) -> dict[str, Any]:
    """A history record as the search wrote it: JSON turned the multipliers into strings."""
    return {**saved, "scores": {float(m): score for m, score in saved["scores"].items()}}


class EffOPDCallback(TrainerCallback):
    """EffOPD inside a Hugging Face trainer: search after the optimizer step at the trigger steps
    (the searched weights are written into the very model the trainer optimizes), add the search's
    metrics to the trainer's next log line, save and restore its state with the trainer's
    checkpoints (module doc).

    The metrics reach trainer.state.log_history and the callbacks after this one (the console
    printer), not the report_to integrations, which the trainer calls first.

    The trainer does not tell callbacks which folder it resumed from: the callback reads
    args.output_dir/checkpoint-N, N the step the trainer resumed at, and refuses it unless its
    trainer_state.json holds the log history the trainer loaded. So resume from a checkpoint under
    args.output_dir (`resume_from_checkpoint=True`, or that folder's path). One process, or DDP
    (every process holds the whole weights; the main process writes).
    """

    def __init__(self, effopd: EffOPD) -> None:
        self.effopd = effopd
        self.pending: dict[str, float] = {}  # the last search's metrics, until the next log line

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        if state.global_step > 0:  # a resumed run: the trainer loaded a checkpoint's state
            folder = checkpoint_folder(args, state.global_step)
            _check_loaded(folder, state)
            self.pending = load_state(folder, state.global_step, self.effopd)
        return control

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        self.pending |= self.effopd.on_step_end(state.global_step, kwargs["model"])
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        # The trainer appended this log line to state.log_history (what trainer_state.json keeps)
        # and handed it to the callbacks before this one (report_to integrations) already: the
        # search's metrics go into both copies, so the callbacks after this one see them too.
        if kwargs.get("logs") is not None and self.pending:
            kwargs["logs"].update(self.pending)
            state.log_history[-1].update(self.pending)
            self.pending = {}
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        if args.should_save:  # the process that writes the trainer's checkpoint files
            save_state(
                checkpoint_folder(args, state.global_step),
                state.global_step,
                self.effopd,
                self.pending,
            )
        return control


def checkpoint_folder(args: TrainingArguments, step: int) -> Path:
    """The folder the Trainer saves step `step` to (`Trainer._save_checkpoint`)."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def _check_loaded(folder: Path, state: TrainerState) -> None:
    """Refuse `folder` unless it is the checkpoint the trainer resumed from: its trainer state
    holds the same log history (compared as JSON text, where NaN equals NaN)."""
    saved = folder / TRAINER_STATE_NAME
    same = saved.is_file() and json.dumps(
        json.loads(saved.read_text())["log_history"], sort_keys=True
    ) == json.dumps(state.log_history, sort_keys=True)
    if not same:
        raise UserError(
            f"The trainer resumed at step {state.global_step} from a checkpoint other than "
            f"{folder}, where the EffOPD callback keeps its state; resume from the checkpoint "
            "under args.output_dir (resume_from_checkpoint=True or its path)."
        )
