"""Functional probes (paper Sec. 4): which parts of the final update buy the final score.

Each probe writes variants of the final update dW_T = W_T - W_base (or of a checkpoint's dW_t)
into one model loaded from the base folder (`WeightPatch`), scores each variant through a
`Scorer`, and returns one table. Every row carries the scorer's values as `score/<key>` and
`probe/gain_recovered` = (acc - acc_base) / (acc_final - acc_base), acc = score/accuracy; it is
None when the final model scores the same as the base.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.patch import Scorer, WeightPatch
from foresight.dynamics.reading import ModelFolder, TensorInfo
from foresight.module_names import ATTENTION_KINDS, MLP_KINDS

Row = dict[str, object]
Deltas = Iterator[tuple[str, torch.Tensor]]


@dataclass
class ProbeContext:
    """What every probe needs: patched model, series, scorer and reference scores."""

    patch: WeightPatch
    infos: list[TensorInfo]
    series: list[tuple[int, ModelFolder]]
    cfg: DynamicsConfig
    scorer: Scorer
    final_norms: dict[str, float]  # tensor name -> ||dW_T||_F
    base_scores: dict[str, float]
    final_scores: dict[str, float]

    def deltas(
        self, folder: ModelFolder | None = None, names: Collection[str] | None = None
    ) -> Deltas:
        """(name, W_folder - W_base) per tensor, read lazily; folder defaults to the final one."""
        folder = folder or self.series[-1][1]
        for info in self.infos:
            if names is None or info.name in names:
                yield info.name, folder.read(info.name) - self.patch.base[info.name]

    def score(self, deltas: Deltas) -> Row:
        """Score base + deltas; the scores and the share of the final gain they recover."""
        return self.score_row(self.patch.score(deltas, self.scorer))

    def score_row(self, scores: dict[str, float]) -> Row:
        return {**scores, "probe/gain_recovered": self.gain(scores)}

    def gain(self, scores: dict[str, float]) -> float | None:
        base, final = self.base_scores["score/accuracy"], self.final_scores["score/accuracy"]
        if abs(final - base) < 1e-12:
            return None
        return (scores["score/accuracy"] - base) / (final - base)


def run_probes(
    model: torch.nn.Module,
    infos: list[TensorInfo],
    series: list[tuple[int, ModelFolder]],
    cfg: DynamicsConfig,
    scorer: Scorer,
) -> dict[str, list[Row]]:
    """The reference table (base and final scores) and one table per probe in cfg.probes.

    model must be loaded from the base folder; it is left bit-for-bit as it was.
    """
    patch = WeightPatch(model, [info.name for info in infos])
    final = series[-1][1]
    final_norms = {
        info.name: float(torch.linalg.vector_norm(final.read(info.name) - patch.base[info.name]))
        for info in infos
    }
    context = ProbeContext(patch, infos, series, cfg, scorer, final_norms, {}, {})
    context.base_scores = patch.score(iter(()), scorer)
    context.final_scores = patch.score(context.deltas(), scorer)
    tables = {
        "reference": [
            {"variant": "base", **context.score_row(context.base_scores)},
            {"variant": "final", **context.score_row(context.final_scores)},
        ]
    }
    for name in cfg.probes:
        tables[name] = PROBES[name](context)
    return tables


def scaling_probe(ctx: ProbeContext) -> list[Row]:
    """W_base + alpha dW_T for each alpha: score against the update norm ||alpha dW_T||_F."""
    total_norm = math.sqrt(sum(norm**2 for norm in ctx.final_norms.values()))
    rows = []
    for alpha in ctx.cfg.scaling_alphas:
        scaled = ((name, alpha * delta) for name, delta in ctx.deltas())
        rows.append({"alpha": alpha, "probe/update_norm": alpha * total_norm, **ctx.score(scaled)})
    return rows


def embedding_swap_probe(ctx: ProbeContext) -> list[Row]:
    """The final model with its embeddings, then its lm_head, put back to the base's.

    A tied lm_head has no tensor of its own (the embedding swap already swaps it), so its row is
    left out.
    """
    rows = []
    for kind in ("embedding", "lm_head"):
        swapped = {info.name for info in ctx.infos if info.kind == kind}
        if not swapped:
            continue
        kept = [info.name for info in ctx.infos if info.name not in swapped]
        rows.append({"variant": f"final_base_{kind}", **ctx.score(ctx.deltas(names=kept))})
    return rows


def window_probe(ctx: ProbeContext) -> list[Row]:
    """Only the MLP (or only the attention) update of layers l-w..l+w on the base, every centre l.

    Beside each score: the update norm of the centre layer's part and of the whole window.
    """
    layers = [info.layer for info in ctx.infos if info.layer is not None]
    if not layers:
        return []
    n_layers, w = max(layers) + 1, ctx.cfg.window
    rows = []
    for part, kinds in (("mlp", MLP_KINDS), ("attention", ATTENTION_KINDS)):
        layer_norms = [0.0] * n_layers
        for info in ctx.infos:
            if info.kind in kinds and info.layer is not None:
                layer_norms[info.layer] += ctx.final_norms[info.name] ** 2
        for centre in range(n_layers):
            low, high = max(0, centre - w), min(n_layers - 1, centre + w)
            names = {
                info.name
                for info in ctx.infos
                if info.kind in kinds and info.layer is not None and low <= info.layer <= high
            }
            rows.append(
                {
                    "part": part,
                    "centre": centre,
                    "layer_low": low,
                    "layer_high": high,
                    "probe/layer_update_norm": math.sqrt(layer_norms[centre]),
                    "probe/window_update_norm": math.sqrt(sum(layer_norms[low : high + 1])),
                    **ctx.score(ctx.deltas(names=names)),
                }
            )
    return rows


def rank_truncate(delta_w: torch.Tensor, pct: float, side: str) -> torch.Tensor:
    """dW keeping only its top (or bottom) ceil(pct% of r) singular components, norm-matched.

    The kept part is rescaled to ||dW||_F, so a score change reflects direction, not size. When
    the kept components carry no norm (the bottom of a rank-deficient update: below 1e-6 of
    ||dW||_F, i.e. rounding noise) the result is zero rather than amplified noise.
    """
    u, sigma, vh = torch.linalg.svd(delta_w, full_matrices=False)  # (m, R), (R,), (R, n)
    rank = sigma.numel()
    kept = max(1, math.ceil(pct / 100 * rank))
    part = slice(0, kept) if side == "top" else slice(rank - kept, rank)
    truncated = (u[:, part] * sigma[part]) @ vh[part]  # (m, n)
    full_norm = float(torch.linalg.vector_norm(delta_w))
    kept_norm = float(torch.linalg.vector_norm(truncated))
    if kept_norm <= 1e-6 * full_norm:
        return torch.zeros_like(delta_w)
    return truncated * (full_norm / kept_norm)


def truncation_probe(ctx: ProbeContext) -> list[Row]:
    """Every attention/MLP matrix's dW_T replaced by `rank_truncate`; other tensors keep dW_T."""
    matrices = {info.name for info in ctx.infos if info.is_matrix}
    rows = []
    for pct in ctx.cfg.truncation_pct:
        for side in ("top", "bottom"):
            deltas = (
                (name, rank_truncate(delta, pct, side) if name in matrices else delta)
                for name, delta in ctx.deltas()
            )
            rows.append({"side": side, "pct": pct, **ctx.score(deltas)})
    return rows


def rescale_factor(beta: float, final_norm: float, norm_t: float) -> float:
    """1 + beta (||dW_T|| / ||dW_t|| - 1): beta = 0 keeps dW_t, beta = 1 matches the final norm."""
    if norm_t <= 0.0:
        return 1.0  # dW_t = 0 stays 0 whatever the factor
    return 1.0 + beta * (final_norm / norm_t - 1.0)


def rescaling_probe(ctx: ProbeContext) -> list[Row]:
    """Each checkpoint's per-tensor dW_t rescaled towards the final per-tensor norm, per beta."""
    final_step = ctx.series[-1][0]
    rows = []
    for index, (step, folder) in enumerate(ctx.series):
        for beta in ctx.cfg.rescale_betas:
            if index == len(ctx.series) - 1:
                # Every beta leaves the final update unchanged: reuse its score.
                scored = ctx.score_row(ctx.final_scores)
            else:
                scaled = (
                    (name, delta * rescale_factor(beta, ctx.final_norms[name], _norm(delta)))
                    for name, delta in ctx.deltas(folder)
                )
                scored = ctx.score(scaled)
            rows.append({"step": step, "progress": step / final_step, "beta": beta, **scored})
    return rows


def _norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor))


PROBES = {
    "scaling": scaling_probe,
    "embedding_swap": embedding_swap_probe,
    "window": window_probe,
    "truncation": truncation_probe,
    "rescaling": rescaling_probe,
}
