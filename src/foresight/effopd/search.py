"""EffOPD: the validation-gated extrapolation search, as one plug-in object (paper §5).

After the optimizer step at the trigger steps (1, 2, 4, 8, ... by default), with Δ = W_t − anchor:
try W_t + m·Δ for m in the candidate list, in order; accept while the validation score does not drop
(>=, or strict > as in the official code), stop at the first failure; keep the last accepted weights
(or W_t if none). The anchor then becomes the kept weights. The optimizer state is not touched.

Three variants studied against the published rule (docs/effopd.md): `min_gain`, a minimum effect a
candidate must add to the best score (with the validators' common random numbers, a paired
comparison), so that ties and noise alone accept nothing; the 'straight' schedule, which checks
every N steps and searches only when the last two N-step segments of Δ point the same way; and the
'average' direction, which replaces Δ by W_t minus an exponential average of the weights since the
anchor (the recent direction, less bent by the path's early curvature), rescaled to ‖Δ‖.

A leaf: it takes the model, the names of the tensors to extrapolate and a validator, and imports
nothing from the trainer. `foresight train` calls `on_step_end(step, model)`; `EffOPDCallback`
(callback.py) adapts it to Hugging Face trainers (transformers.Trainer, TRL).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from foresight.config_sections import EffOPDConfig
from foresight.effopd.extrapolate import (
    Weights,
    cosine,
    difference,
    inner,
    local,
    snapshot,
    update_norm,
    write,
    write_candidate,
)
from foresight.errors import UserError

# validator(step) -> score(model) for the search at `step`; higher is better. A search scores W_t
# first, then each candidate; a validator may fix per-search data (completions to score, a seed).
Validator = Callable[[int], Callable[[torch.nn.Module], float]]

# The entries of `EffOPD.state_dict()` that hold weight-shaped tensors by parameter name.
TENSOR_STATES = ("anchor", "previous", "average")


def is_search_step(cfg: EffOPDConfig, step: int) -> bool:
    """A trigger step: a search (pow2, every) or a straightness check that may search (straight)."""
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
        # direction 'average': the exponential average of the weights since the anchor.
        self.average = self._fresh_average()
        # schedule 'straight': the segment Δ of the last check, against which the next one is
        # compared (None before the first check).
        self.previous: Weights | None = None
        self.history: list[dict[str, Any]] = []

    def on_step_end(self, step: int, model: torch.nn.Module) -> dict[str, float]:
        """Search if `step` is a trigger step; return the metrics to log (empty otherwise).

        Every step, the 'average' direction's average moves toward W_t by 1 − average_beta.
        With schedule 'straight' the anchor moves to W_t at every check, so Δ is the last segment
        of `every` steps, and the search runs only when cos(Δ, previous Δ) >= min_cosine."""
        if self.average is not None:
            with torch.no_grad():
                for name, param in self.params.items():
                    average = self.average[name]
                    average.lerp_(local(param).to(average.device), 1 - self.cfg.average_beta)
        if not is_search_step(self.cfg, step):
            return {}
        current = snapshot(self.params)
        if self.cfg.schedule != "straight":
            return self._search(step, model, current)
        segment = difference(current, self.anchor)
        previous, self.previous = self.previous, segment
        if previous is None:
            self._move_anchor(current)
            return {}
        straightness = cosine(self.params, segment, previous)
        if straightness < self.cfg.min_cosine:
            self._move_anchor(current)
            return {"effopd/segment_cosine": straightness}
        return self._search(step, model, current) | {"effopd/segment_cosine": straightness}

    def _fresh_average(self) -> Weights | None:
        if self.cfg.direction != "average":
            return None
        return {name: tensor.clone() for name, tensor in self.anchor.items()}

    def _move_anchor(self, weights: Weights) -> None:
        """The anchor moves to `weights`; the 'average' direction's average restarts there."""
        self.anchor = weights
        self.average = self._fresh_average()

    def _origin(self, current: Weights) -> tuple[Weights, dict[str, float]]:
        """The point O that candidates W_t + m·(W_t − O) extrapolate from: the anchor, or for the
        'average' direction W_t − ‖Δ‖·d/‖d‖ with d = W_t − average (same length, recent way)."""
        if self.average is None:
            return self.anchor, {}
        delta, recent = difference(current, self.anchor), difference(current, self.average)
        lengths = [math.sqrt(inner(self.params, v, v)) for v in (delta, recent)]
        scale = lengths[0] / lengths[1] if lengths[1] else 0.0
        origin = {name: current[name] - scale * recent[name] for name in current}
        return origin, {"effopd/direction_cosine": cosine(self.params, recent, delta)}

    def _search(self, step: int, model: torch.nn.Module, current: Weights) -> dict[str, float]:
        """Try W_t + m·(W_t − origin) for each m in order; keep the last accepted (or W_t)."""
        started = time.perf_counter()
        origin, direction_stats = self._origin(current)
        was_training = model.training
        model.eval()
        score = self.validator(step)
        initial = best = score(model)
        accepted, scores = 0.0, {}
        for multiplier in self.cfg.multipliers:
            write_candidate(self.params, current, origin, multiplier)
            scores[multiplier] = score(model)
            gain = scores[multiplier] - best - self.cfg.min_gain
            if not (gain >= 0 if self.cfg.accept == "ge" else gain > 0):
                break
            best, accepted = scores[multiplier], multiplier
        if accepted:
            write_candidate(self.params, current, origin, accepted)
        else:
            write(self.params, current)  # exact undo: W_t bit for bit
        delta_norm = update_norm(self.params, current, self.anchor)
        self._move_anchor(snapshot(self.params))
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
        return stats | direction_stats

    def state_dict(self) -> dict[str, Any]:
        """The anchor and history, plus the 'straight' segment and the 'average' where kept."""
        state = {"anchor": self.anchor, "history": self.history}
        return state | {
            key: weights for key in TENSOR_STATES[1:] if (weights := getattr(self, key)) is not None
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("average") is None) != (self.cfg.direction != "average"):
            raise UserError(
                "The saved EffOPD state does not match effopd.direction "
                f"'{self.cfg.direction}'; resume with the run's own EffOPD settings."
            )
        self.anchor = {name: tensor.clone() for name, tensor in state["anchor"].items()}
        for key in TENSOR_STATES[1:]:
            weights = state.get(key)
            setattr(
                self, key, None if weights is None else {n: t.clone() for n, t in weights.items()}
            )
        self.history = list(state["history"])
