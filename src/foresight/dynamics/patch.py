"""One loaded model whose weights the probes overwrite in place and restore bit for bit.

Loading a model per probe variant would cost a model load (and a model's memory) per score; the
probes instead keep one model built from the base folder, write `base + delta` into the tensors a
variant changes, score, and copy the saved base values back. Restoring by copying the saved
tensors (never by subtracting the delta again) is what makes the restore exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from foresight.errors import UserError

Scorer = Callable[[torch.nn.Module], dict[str, float]]


def load_model(base_dir: Path) -> torch.nn.Module:
    """The base model in float32 and eval mode, built by transformers from its HF folder."""
    # Imported here: transformers takes seconds to import, and re-rendering a report never needs it.
    from transformers import AutoModelForCausalLM

    if not (Path(base_dir) / "config.json").is_file():
        raise UserError(
            f"{base_dir} has no config.json, so the probes cannot build the model; pass an HF "
            "model folder as the base or run without probes."
        )
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return model.eval()


def score_columns(scores: dict[str, float]) -> dict[str, float]:
    """A scorer's values as `score/<key>` columns, with an `eval/` namespace dropped.

    `foresight.train.evaluate.task_scorer` reports `eval/accuracy`, a bare Scorer `accuracy`; both land
    in `score/accuracy`, the column the probes' gain and figures read.
    """
    columns = {f"score/{key.removeprefix('eval/')}": float(value) for key, value in scores.items()}
    if "score/accuracy" not in columns:
        raise ValueError(f"A scorer must return 'accuracy'; this one returned {sorted(scores)}.")
    return columns


class WeightPatch:
    """Score a model with some tensors set to base + delta, then put the base values back."""

    def __init__(self, model: torch.nn.Module, names: Iterable[str]):
        # remove_duplicate=False lists a tied lm_head under its own name too.
        params = dict(model.named_parameters(remove_duplicate=False))
        names = list(names)
        unknown = [name for name in names if name not in params]
        if unknown:
            raise UserError(
                f"The model built from the base folder has no parameter {unknown[0]} (and "
                f"{len(unknown) - 1} more) that the checkpoints hold; pass the matching base."
            )
        self.model = model
        self.params = {name: params[name] for name in names}
        self.base = {name: param.detach().clone() for name, param in self.params.items()}

    def score(self, deltas: Iterable[tuple[str, torch.Tensor]], scorer: Scorer) -> dict[str, float]:
        """scorer(model) with each named tensor at base + delta (others at base), keys `score/...`.

        deltas is consumed lazily, so a generator keeps one delta in memory at a time.
        """
        written: list[str] = []
        try:
            # no_grad around the scorer too: scoring never needs an autograd graph.
            with torch.no_grad():
                for name, delta in deltas:
                    written.append(name)
                    self.params[name].copy_(self.base[name] + delta)
                scores = scorer(self.model)
        finally:
            self.restore(written)
        return score_columns(scores)

    def restore(self, names: Iterable[str] | None = None) -> None:
        """Copy the saved base values back (all tensors when names is None)."""
        with torch.no_grad():
            for name in self.params if names is None else names:
                self.params[name].copy_(self.base[name])
