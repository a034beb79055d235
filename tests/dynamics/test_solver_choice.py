"""The default solver (`svd_solver: auto`) gives the exact top-20 alignment on the embedded models'
matrix sizes, even for early, flat-spectrum updates where the randomized solver is off by ~1e-2.

Run: .venv/bin/python -m pytest tests/dynamics/test_solver_choice.py -q
"""

from __future__ import annotations

import pytest
import torch

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.direction import EXACT_MAX_SIDE, alignment, top_left_vectors

K = 20


def flat_update(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A weak rank-8 direction under isotropic noise of the same energy: an early update."""
    generator = torch.Generator().manual_seed(seed)
    signal = torch.randn(rows, 8, generator=generator, dtype=torch.float64)
    signal = signal @ torch.randn(8, cols, generator=generator, dtype=torch.float64)
    noise = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return signal / signal.norm() + noise / noise.norm()


@pytest.mark.parametrize(("rows", "cols"), [(128, 128), (384, 128), (128, 384), (64, 64)])
def test_default_alignment_matches_float64_on_flat_spectra(rows, cols):
    early = flat_update(rows, cols, 0)
    final = flat_update(rows, cols, 1) + 0.5 * early
    solver = DynamicsConfig().svd_solver
    measured = alignment(
        top_left_vectors(early.float(), K, solver), top_left_vectors(final.float(), K, solver), K
    )
    reference = alignment(
        top_left_vectors(early, K, "exact"), top_left_vectors(final, K, "exact"), K
    )
    # Tolerance from perturbation theory, not from one machine: a backward-stable float32 SVD is
    # exact for W + E with ||E|| <= c·eps32·||W|| (LAPACK: c a modest function of the size; we take
    # c = 4, while the float32 errors seen are ~1e-7, far inside), and Davis-Kahan moves the i-th
    # singular vector by sin θ <= ||E|| / gap_i. Each |cos| in the alignment moves by at most sin θ,
    # so the mean moves by at most max_i ||E|| / gap_i over the top K (+1 for the last gap).
    eps32 = torch.finfo(torch.float32).eps
    bound = 0.0
    for matrix in (early, final):
        sigma = torch.linalg.svdvals(matrix)
        gaps = (sigma[: K + 1] - sigma[1 : K + 2]).abs()
        bound = max(bound, float(4 * eps32 * sigma[0] / gaps.min()))
    assert abs(measured - reference) <= bound, (measured, reference, bound)
    assert bound < 2e-3  # tight enough to catch the randomized solver's 4e-3 to 1e-2 errors


def test_larger_matrices_take_the_randomized_solver(monkeypatch):
    called = []
    monkeypatch.setattr(torch, "svd_lowrank", lambda *a, **k: called.append(1) or torch.svd(a[0]))
    top_left_vectors(torch.randn(EXACT_MAX_SIDE + 1, 300), K, "auto")
    assert called
    called.clear()
    top_left_vectors(torch.randn(EXACT_MAX_SIDE, 300), K, "auto")
    assert not called
