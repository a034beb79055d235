"""Static per-tensor metrics of the update dW = W_after - W_before (paper Sec. 3, Table 1).

Each family is a pure function `(w_before, w_after, **options) -> dict[str, float | None]`, listed
in `METRICS`. No config, no I/O. Keys are `dynamics/<metric>`. A value is None (null in JSON, empty
in CSV) exactly when the metric divides by zero: the update or the base weight is all zeros.
The math runs in the inputs' dtype; spectra are taken from the exact `torch.linalg.svdvals`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Values = dict[str, float | None]


def norm_metrics(w_before: torch.Tensor, w_after: torch.Tensor) -> Values:
    """Frobenius norm of dW and its ratio to the base weight's norm; any number of dims.

    frobenius = ||dW||_F,  frobenius_rel = ||dW||_F / ||W_before||_F
    """
    delta_w = w_after - w_before
    delta_norm = float(torch.linalg.vector_norm(delta_w))
    base_norm = float(torch.linalg.vector_norm(w_before))
    return {
        "dynamics/frobenius": delta_norm,
        "dynamics/frobenius_rel": delta_norm / base_norm if base_norm > 0 else None,
    }


def spectrum_metrics(
    w_before: torch.Tensor, w_after: torch.Tensor, energy_top_k: Sequence[int] = (1, 4, 16)
) -> Values:
    """Spectral metrics of a 2-D dW (paper Table 1); {} for tensors that are not matrices.

    spectral_norm = s_1;  spectral_ratio = s_1 / ||dW||_F
    effective_rank = exp(-sum_i p_i log p_i), p_i = s_i / sum_j s_j (un-squared, as the paper)
    top1pct_energy = sqrt(sum_{i<=k} s_i^2 / sum_j s_j^2), k = ceil(r / 100), r = min(m, n)
    energy_top{k} = sum_{i<=k} s_i^2 / sum_j s_j^2 (share of ||dW||_F^2, no square root), k <= r
    """
    if w_before.ndim != 2:
        return {}
    delta_w = w_after - w_before  # (m, n)
    # svdvals is markedly faster on a tall matrix than on its wide transpose; the values agree.
    tall = delta_w if delta_w.shape[0] >= delta_w.shape[1] else delta_w.T
    if not bool(delta_w.any()):
        # An untouched matrix (most of a LoRA run's, a frozen embedding): all singular values are
        # 0, known without the SVD, which for a vocabulary-sized matrix costs seconds.
        return spectrum_of(torch.zeros(tall.shape[1], dtype=torch.float64), energy_top_k)
    sigma = torch.linalg.svdvals(tall).to(torch.float64)  # (R,), descending
    return spectrum_of(sigma, energy_top_k)


def spectrum_of(sigma: torch.Tensor, energy_top_k: Sequence[int] = (1, 4, 16)) -> Values:
    """The metrics of `spectrum_metrics` from singular values already in hand (descending)."""
    rank = sigma.numel()
    energy = sigma.square()
    total_energy = float(energy.sum())
    total_sigma = float(sigma.sum())
    values: Values = {"dynamics/spectral_norm": float(sigma[0]) if rank else 0.0}
    if total_energy <= 0.0:
        # dW = 0: no direction, so every ratio is 0/0. Null, not NaN (docs/metrics.md).
        values["dynamics/spectral_ratio"] = None
        values["dynamics/effective_rank"] = None
        values["dynamics/top1pct_energy"] = None
        values.update({f"dynamics/energy_top{k}": None for k in energy_top_k})
        return values
    p = sigma / total_sigma
    p = p[p > 0]  # 0 log 0 = 0
    cumulative = energy.cumsum(0) / total_energy  # (R,)
    top = math.ceil(rank / 100)
    values["dynamics/spectral_ratio"] = float(sigma[0]) / math.sqrt(total_energy)
    values["dynamics/effective_rank"] = math.exp(float(-(p * p.log()).sum()))
    values["dynamics/top1pct_energy"] = math.sqrt(min(1.0, float(cumulative[top - 1])))
    # k beyond the rank keeps all the energy; min(1, .) hides the last ulp of rounding.
    values.update(
        {
            f"dynamics/energy_top{k}": min(1.0, float(cumulative[min(k, rank) - 1]))
            for k in energy_top_k
        }
    )
    return values


def sparsity_metrics(
    w_before: torch.Tensor,
    w_after: torch.Tensor,
    sparsity_abs: Sequence[float] = (1e-6, 1e-5, 1e-4),
    sparsity_rel: Sequence[float] = (0.01, 0.1),
) -> Values:
    """Coordinate sparsity of dW: share of entries with |dW| below each threshold; any dims.

    sparsity_abs_{t} = mean(|dW| < t)
    sparsity_rel_{c} = mean(|dW| < c * rms(W_before)),  rms = sqrt(mean(W_before^2))
    """
    magnitude = (w_after - w_before).abs_()  # in place: one full-size temporary, not two
    count = max(magnitude.numel(), 1)
    base_rms = float(torch.linalg.vector_norm(w_before)) / math.sqrt(count)
    values: Values = {
        f"dynamics/sparsity_abs_{t:g}": int(torch.count_nonzero(magnitude < t)) / count
        for t in sparsity_abs
    }
    for c in sparsity_rel:
        # An all-zero base weight has no scale to be relative to.
        below = int(torch.count_nonzero(magnitude < c * base_rms)) / count
        values[f"dynamics/sparsity_rel_{c:g}"] = below if base_rms > 0 else None
    return values


METRICS = {
    "norm": norm_metrics,
    "spectrum": spectrum_metrics,
    "sparsity": sparsity_metrics,
}
