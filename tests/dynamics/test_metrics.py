"""Static metrics against float64 NumPy references on matrices with planted spectra.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foresight.dynamics.metrics import (
    METRICS,
    norm_metrics,
    sparsity_metrics,
    spectrum_metrics,
)

from .series import planted_matrix

KS = (1, 4, 16)


def reference_spectrum(delta: np.ndarray, ks=KS) -> dict[str, float]:
    """The paper's formulas written out in float64 from NumPy's singular values."""
    sigma = np.linalg.svd(delta, compute_uv=False)
    energy = sigma**2
    p = sigma / sigma.sum()
    p = p[p > 0]
    top = math.ceil(min(delta.shape) / 100)
    values = {
        "dynamics/spectral_norm": sigma[0],
        "dynamics/spectral_ratio": sigma[0] / np.linalg.norm(delta),
        "dynamics/effective_rank": np.exp(-(p * np.log(p)).sum()),
        "dynamics/top1pct_energy": np.sqrt(energy[:top].sum() / energy.sum()),
    }
    for k in ks:
        values[f"dynamics/energy_top{k}"] = energy[:k].sum() / energy.sum()
    return values


def check_close(values: dict, reference: dict, rtol: float) -> None:
    for key, expected in reference.items():
        assert values[key] == pytest.approx(expected, rel=rtol, abs=1e-12), key


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (150, 120)])
def test_spectrum_with_known_singular_values(shape):
    rng = np.random.default_rng(0)
    rank = min(shape)
    sigma = np.sort(rng.uniform(0.1, 5.0, rank))[::-1]
    delta = planted_matrix(rng, *shape, sigma)
    base = rng.standard_normal(shape)
    values = spectrum_metrics(torch.from_numpy(base), torch.from_numpy(base + delta), KS)
    assert values["dynamics/spectral_norm"] == pytest.approx(sigma[0], rel=1e-10)
    p = sigma / sigma.sum()
    assert values["dynamics/effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    # r = 120 > 100 makes the top-1% cut k = ceil(120/100) = 2, not 1.
    top = math.ceil(rank / 100)
    expected_top = np.sqrt((sigma[:top] ** 2).sum() / (sigma**2).sum())
    assert values["dynamics/top1pct_energy"] == pytest.approx(expected_top, rel=1e-10)
    check_close(values, reference_spectrum(delta), rtol=1e-10)


def test_spectrum_float32_low_rank_plus_noise():
    rng = np.random.default_rng(1)
    delta = planted_matrix(rng, 96, 64, np.array([3.0, 2.0, 1.0])) + 0.01 * rng.standard_normal(
        (96, 64)
    )
    base = rng.standard_normal((96, 64))
    w_before = torch.tensor(base, dtype=torch.float32)
    w_after = torch.tensor(base + delta, dtype=torch.float32)
    values = spectrum_metrics(w_before, w_after, KS)
    # float32 inputs: the reference uses the same rounded matrices, tolerance of float32 SVD.
    rounded = (w_after - w_before).double().numpy()
    check_close(values, reference_spectrum(rounded), rtol=1e-4)
    assert values["dynamics/energy_top4"] > 0.95  # the planted rank-3 signal dominates


def test_rank_one_update():
    rng = np.random.default_rng(2)
    delta = np.outer(rng.standard_normal(30), rng.standard_normal(20))
    values = spectrum_metrics(torch.zeros(30, 20, dtype=torch.float64), torch.from_numpy(delta))
    assert values["dynamics/spectral_ratio"] == pytest.approx(1.0)
    assert values["dynamics/effective_rank"] == pytest.approx(1.0, rel=1e-6)
    assert values["dynamics/top1pct_energy"] == pytest.approx(1.0)
    assert values["dynamics/energy_top1"] == pytest.approx(1.0)
    assert values["dynamics/spectral_norm"] == pytest.approx(np.linalg.norm(delta))


def test_all_zero_update_has_no_nan():
    base = torch.randn(12, 8)
    for name, metric in METRICS.items():
        values = metric(base, base.clone())
        assert all(v is None or math.isfinite(v) for v in values.values()), name
    spectrum = spectrum_metrics(base, base.clone(), KS)
    assert spectrum["dynamics/spectral_norm"] == 0.0
    nulls = ["spectral_ratio", "effective_rank", "top1pct_energy", "energy_top1", "energy_top16"]
    assert all(spectrum[f"dynamics/{key}"] is None for key in nulls)
    assert norm_metrics(base, base.clone()) == {
        "dynamics/frobenius": 0.0,
        "dynamics/frobenius_rel": 0.0,
    }
    sparsity = sparsity_metrics(base, base.clone(), (1e-6,), (0.01,))
    assert sparsity == {"dynamics/sparsity_abs_1e-06": 1.0, "dynamics/sparsity_rel_0.01": 1.0}


def test_zero_base_weight_gives_null_ratios():
    after = torch.ones(4, 3)
    assert norm_metrics(torch.zeros(4, 3), after)["dynamics/frobenius_rel"] is None
    assert (
        sparsity_metrics(torch.zeros(4, 3), after, (), (0.1,))["dynamics/sparsity_rel_0.1"] is None
    )


def test_one_dimensional_tensors_skip_the_spectrum():
    base, after = torch.ones(16, dtype=torch.float64), torch.linspace(0, 2, 16, dtype=torch.float64)
    assert spectrum_metrics(base, after) == {}
    norms = norm_metrics(base, after)
    delta = after.numpy() - base.numpy()
    assert norms["dynamics/frobenius"] == pytest.approx(np.sqrt((delta**2).sum()))
    assert norms["dynamics/frobenius_rel"] == pytest.approx(np.sqrt((delta**2).sum()) / 4.0)


@pytest.mark.parametrize("shape", [(50, 30), (200,)])
def test_sparsity_against_a_loop(shape):
    rng = np.random.default_rng(3)
    base = rng.standard_normal(shape)
    # Entries spread over several orders of magnitude so every threshold splits them.
    delta = rng.standard_normal(shape) * 10.0 ** rng.uniform(-7, -1, shape)
    values = sparsity_metrics(
        torch.from_numpy(base), torch.from_numpy(base + delta), (1e-6, 1e-4), (0.01, 0.1)
    )
    flat = np.abs(delta).ravel()
    rms = np.sqrt((base**2).mean())
    for t in (1e-6, 1e-4):
        expected = sum(1 for d in flat if d < t) / flat.size
        assert values[f"dynamics/sparsity_abs_{t:g}"] == pytest.approx(expected, abs=1e-12)
    for c in (0.01, 0.1):
        expected = sum(1 for d in flat if d < c * rms) / flat.size
        assert values[f"dynamics/sparsity_rel_{c:g}"] == pytest.approx(expected, abs=1e-12)


def test_energy_k_beyond_rank_keeps_everything():
    rng = np.random.default_rng(4)
    delta = torch.from_numpy(rng.standard_normal((5, 3)))
    values = spectrum_metrics(torch.zeros(5, 3, dtype=torch.float64), delta, (2, 50))
    assert values["dynamics/energy_top50"] == 1.0
    assert values["dynamics/energy_top2"] < 1.0
