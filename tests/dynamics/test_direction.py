"""Direction metrics against float64 references: known principal angles, fast vs exact solver.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foresight.dynamics.direction import (
    alignment,
    direction_metrics,
    subspace_overlap,
    top_left_vectors,
    trajectory_pca,
)

from .series import planted_matrix


def rotated_pair(m: int, angles: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """U_T (m, k) and U_t (m, k) whose i-th columns meet at angles[i], all other pairs orthogonal.

    u_t_i = cos(a_i) q_i + sin(a_i) q_{k+i}: the principal angles between the two subspaces are
    exactly the a_i.
    """
    k = len(angles)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, 2 * k)))
    u_final = q[:, :k]
    u_t = q[:, :k] * np.cos(angles) + q[:, k:] * np.sin(angles)
    return torch.from_numpy(u_t), torch.from_numpy(u_final)


def test_alignment_and_overlap_with_known_principal_angles():
    angles = np.linspace(0.0, 1.2, 20)
    u_t, u_final = rotated_pair(64, angles)
    assert alignment(u_t, u_final, 20) == pytest.approx(np.mean(np.abs(np.cos(angles))))
    for k in (1, 5, 20):
        expected = np.mean(np.cos(angles[:k]) ** 2)
        assert subspace_overlap(u_t, u_final, k) == pytest.approx(expected, rel=1e-12)
        # The definition ||U_t^T U_T||_F^2 / k written out with NumPy.
        cross = u_t.numpy()[:, :k].T @ u_final.numpy()[:, :k]
        assert subspace_overlap(u_t, u_final, k) == pytest.approx((cross**2).sum() / k)


def test_overlap_ignores_rotation_inside_the_subspace_alignment_does_not():
    _, u_final = rotated_pair(40, np.zeros(6))
    rotation, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
    u_t = u_final @ torch.from_numpy(rotation)
    assert subspace_overlap(u_t, u_final, 6) == pytest.approx(1.0)
    assert alignment(u_t, u_final, 6) < 0.9
    flipped = u_final * torch.tensor([1.0, -1, 1, -1, 1, -1], dtype=torch.float64)
    assert alignment(flipped, u_final, 6) == pytest.approx(1.0)  # signs do not count


def test_k_is_capped_at_the_available_vectors():
    u_t, u_final = rotated_pair(30, np.full(4, 0.3))
    metrics = direction_metrics(u_t, u_final, alignment_k=20, overlap_k=[1, 20])
    assert metrics["dynamics/alignment"] == pytest.approx(np.cos(0.3))
    assert metrics["dynamics/overlap_top20"] == pytest.approx(np.cos(0.3) ** 2)


@pytest.mark.parametrize("shape", [(60, 40), (40, 60)])
def test_exact_vectors_match_numpy(shape):
    rng = np.random.default_rng(2)
    delta = planted_matrix(rng, *shape, np.linspace(4.0, 0.5, 30))
    u = top_left_vectors(torch.from_numpy(delta), 10, solver="exact")
    u_ref = np.linalg.svd(delta, full_matrices=False)[0][:, :10]
    cosines = np.abs((u.numpy() * u_ref).sum(0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-10)


def test_fast_path_matches_exact_path():
    """Randomized solver vs exact SVD on a decaying spectrum (s_i = 0.85^i) plus noise.

    Stated tolerance: with k + 10 sketch columns and 4 power iterations, every one of the top 20
    vectors is within |cos| >= 1 - 1e-3 of the exact one, and alignment / overlap values computed
    from the two paths differ by less than 1e-3.
    """
    rng = np.random.default_rng(3)
    sigma = 0.85 ** np.arange(60)
    final = planted_matrix(rng, 300, 200, sigma) + 1e-4 * rng.standard_normal((300, 200))
    early = final + planted_matrix(rng, 300, 200, 0.2 * sigma[:10])
    final_t = torch.tensor(final, dtype=torch.float32)
    early_t = torch.tensor(early, dtype=torch.float32)
    fast = top_left_vectors(final_t, 20, solver="lowrank", niter=4, seed=0)
    exact = top_left_vectors(final_t, 20, solver="exact")
    assert fast.shape == exact.shape == (300, 20)
    assert (fast * exact).sum(0).abs().min() >= 1 - 1e-3
    fast_early = top_left_vectors(early_t, 20, solver="lowrank", niter=4, seed=0)
    exact_early = top_left_vectors(early_t, 20, solver="exact")
    fast_metrics = direction_metrics(fast_early, fast, 20, [1, 5, 20])
    exact_metrics = direction_metrics(exact_early, exact, 20, [1, 5, 20])
    for key, value in exact_metrics.items():
        assert fast_metrics[key] == pytest.approx(value, abs=1e-3), key


def test_low_rank_signal_vectors_are_found_by_the_fast_path():
    rng = np.random.default_rng(4)
    signal = planted_matrix(rng, 200, 120, np.array([5.0, 4.0, 3.0, 2.0]))
    delta = torch.tensor(signal + 0.01 * rng.standard_normal((200, 120)), dtype=torch.float32)
    fast = top_left_vectors(delta, 4, solver="lowrank", niter=2).double().numpy()
    exact = np.linalg.svd(delta.double().numpy(), full_matrices=False)[0][:, :4]
    assert np.abs((fast * exact).sum(0)).min() > 1 - 1e-4
    # Against the noiseless signal the gap to the noise (s_4 = 2 vs ~0.2) bounds the agreement.
    planted = np.linalg.svd(signal, full_matrices=False)[0][:, :4]
    assert np.abs((fast * planted).sum(0)).min() > 0.99


def test_solver_leaves_the_global_rng_alone():
    delta = torch.randn(200, 100)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    top_left_vectors(delta, 5, solver="lowrank")  # draws its sketch from a forked generator
    assert torch.equal(torch.rand(3), expected)


def reference_pca(vectors: np.ndarray) -> tuple[float, float]:
    """Sign-align to the last vector, centre, eigen-decompose the covariance in float64."""
    signs = np.sign(vectors @ vectors[-1])
    aligned = vectors * signs[:, None]
    centred = aligned - aligned.mean(0)
    eigen = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    return eigen[0] / eigen.sum(), eigen[:2].sum() / eigen.sum()


def test_trajectory_pca_matches_reference_and_ignores_sign_flips():
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((6, 12))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pc1, pc12 = reference_pca(vectors)
    flips = np.array([1, -1, -1, 1, -1, 1])[:, None]
    for candidate in (vectors, vectors * flips):
        values = trajectory_pca(list(torch.from_numpy(candidate)))
        assert values["dynamics/pca_pc1"] == pytest.approx(pc1, rel=1e-10)
        assert values["dynamics/pca_pc12"] == pytest.approx(pc12, rel=1e-10)


def test_trajectory_on_a_line_and_degenerate_trajectories():
    start, end = np.eye(8)[0], np.eye(8)[1]
    line = [torch.from_numpy(start + t * (end - start)) for t in np.linspace(0, 1, 5)]
    assert trajectory_pca(line)["dynamics/pca_pc1"] == pytest.approx(1.0)
    still = [torch.from_numpy(end)] * 4
    assert trajectory_pca(still) == {"dynamics/pca_pc1": None, "dynamics/pca_pc12": None}
    assert trajectory_pca(line[:1])["dynamics/pca_pc1"] is None
