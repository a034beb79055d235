"""EffOPD: the validation-gated extrapolation search, as one plug-in object (paper §5).

After the optimizer step at the trigger steps (1, 2, 4, 8, ... by default), with Δ = W_t − anchor:
try W_t + m·Δ for m in the candidate list, in order; accept while the validation score does not drop
(>=, or strict > as in the official code), stop at the first failure; keep the last accepted weights
(or W_t if none). The anchor then becomes the kept weights. The optimizer state is not touched.

A leaf: it takes the model, the names of the tensors to extrapolate and a validator, and imports
nothing from the trainer. `foresight train` calls `on_step_end(step, model)`; `EffOPDCallback`
(callback.py) adapts it to Hugging Face trainers (transformers.Trainer, TRL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from foresight.config import EffOPDConfig
from foresight.effopd.extrapolate import snapshot, update_norm, write, write_candidate
from foresight.errors import UserError

# validator(step) -> score(model) for the search at `step`; higher is better. A search scores W_t
# first, then each candidate; a validator may fix per-search data (completions to score, a seed).
Validator = Callable[[int], Callable[[torch.nn.Module], float]]


def is_search_step(cfg: EffOPDConfig, step: int) -> bool:
    if cfg.schedule == "pow2":
        return step >= 1 and step & (step - 1) == 0
    return step % cfg.every == 0


def next_search_step(cfg: EffOPDConfig, step: int) -> int:
    """The first trigger step after `step`."""
    if cfg.schedule == "pow2":
        return 1 << step.bit_length() if step >= 1 else 1
    return (step // cfg.every + 1) * cfg.every


class EffOPD:
    """Holds the anchor of the extrapolated tensors and runs the search at trigger steps."""

    def __init__(
        self, cfg: EffOPDConfig, model: torch.nn.Module, names: list[str], validator: Validator
    ) -> None:
        self.cfg, self.validator = cfg, validator
        if not names:
            raise UserError(
                f"effopd.modules {cfg.modules} select no 2-D weight of this model; use "
                "kinds among q, k, v, o, gate, up, down."
            )
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in names}
        self.anchor = snapshot(self.params)
        self.history: list[dict[str, Any]] = []

    def on_step_end(self, step: int, model: torch.nn.Module) -> dict[str, float]:
        """Search if `step` is a trigger step; return the metrics to log (empty otherwise)."""
        if not is_search_step(self.cfg, step):
            return {}
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        score = self.validator(step)
        current = snapshot(self.params)
        initial = best = score(model)
        accepted, scores = 0.0, {}
        for multiplier in self.cfg.multipliers:
            write_candidate(self.params, current, self.anchor, multiplier)
            scores[multiplier] = score(model)
            better = (
                scores[multiplier] >= best if self.cfg.accept == "ge" else scores[multiplier] > best
            )
            if not better:
                break
            best, accepted = scores[multiplier], multiplier
        if accepted:
            write_candidate(self.params, current, self.anchor, accepted)
        else:
            write(self.params, current)  # exact undo: W_t bit for bit
        delta_norm = update_norm(self.params, current, self.anchor)
        self.anchor = snapshot(self.params)
        model.train(was_training)
        record = {
            "step": step,
            "initial_score": initial,
            "scores": scores,
            "accepted": accepted,
            "best_score": best,
            "delta_norm": delta_norm,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(record)
        stats = {
            "effopd/accepted_multiplier": accepted,
            "effopd/initial_score": initial,
            "effopd/best_score": best,
            "effopd/delta_norm": delta_norm,
            "time/effopd_s": record["seconds"],
        }
        stats |= {f"effopd/score@{m:g}": s for m, s in scores.items()}
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor = {name: tensor.clone() for name, tensor in state["anchor"].items()}
        self.history = list(state["history"])
