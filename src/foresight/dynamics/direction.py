"""Direction of the update: top singular vectors, alignment with the final update, trajectory PCA.

Only the top-K left singular vectors of each dW are needed (K = 20 in the paper). `solver="auto"`
(the default) takes them from the exact `torch.linalg.svd` for matrices whose smaller side is at most
EXACT_MAX_SIDE, where it costs about as much as the randomized solver (benchmarks/svd_solvers.py,
docs/metrics.md), and from the randomized `torch.svd_lowrank` (Halko et al.) above it, where the
exact SVD is 10-70x slower; "exact" and "lowrank" force one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Extra random directions of the randomized solver beyond the K wanted: with 10, the error in the
# top-K vectors falls with the gap s_K / s_{K+10} (Halko, Martinsson & Tropp 2011, Sec. 10).
OVERSAMPLE = 10
# Measured crossover (benchmarks/svd_solvers.py, docs/metrics.md): up to a smaller side of 128 the
# exact SVD takes at most a few ms and 0.5-2.6x the randomized solver's time; at 576 it is 10-20x.
EXACT_MAX_SIDE = 128


def top_left_vectors(
    delta_w: torch.Tensor, k: int, solver: str = "auto", niter: int = 4, seed: int = 0
) -> torch.Tensor:
    """The k leading left singular vectors of delta_w (m, n) as columns: (m, min(k, m, n)).

    Columns are unit vectors in descending singular-value order; each one's sign is arbitrary.
    """
    rank = min(delta_w.shape)
    k = min(k, rank)
    exact = solver == "exact" or (solver == "auto" and rank <= EXACT_MAX_SIDE)
    if exact or k + OVERSAMPLE >= rank:
        # Small matrices: the randomized sketch would be as large as the matrix itself.
        u, _, _ = torch.linalg.svd(delta_w, full_matrices=False)  # (m, R)
        return u[:, :k]
    # fork_rng keeps the caller's global RNG stream untouched while seeding the sketch.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, _, _ = torch.svd_lowrank(delta_w, q=k + OVERSAMPLE, niter=niter)  # (m, k + 10)
    return u[:, :k]


def alignment(u_t: torch.Tensor, u_final: torch.Tensor, k: int = 20) -> float:
    """Paper's alignment: mean over i = 1..k of |cos(u_i(t), u_i(T))|.

    u_t, u_final: (m, >= k') unit columns; k is capped at the columns both have. Matching the
    i-th vector to the i-th vector makes this sensitive to order swaps between close singular
    values; `subspace_overlap` is the rotation-invariant counterpart.
    """
    k = min(k, u_t.shape[1], u_final.shape[1])
    cosines = (u_t[:, :k] * u_final[:, :k]).sum(0).abs()  # (k,)
    return float(cosines.mean())


def subspace_overlap(u_t: torch.Tensor, u_final: torch.Tensor, k: int) -> float:
    """Overlap of the top-k subspaces: ||U_t,k^T U_T,k||_F^2 / k = mean of cos^2(principal angles).

    1 for the same subspace, 0 for orthogonal ones, about k/m for random ones. k is capped at the
    columns both have.
    """
    k = min(k, u_t.shape[1], u_final.shape[1])
    cross = u_t[:, :k].T @ u_final[:, :k]  # (k, k)
    return float(cross.square().sum()) / k


def direction_metrics(
    u_t: torch.Tensor, u_final: torch.Tensor, alignment_k: int, overlap_k: Sequence[int]
) -> dict[str, float]:
    """`alignment` and `subspace_overlap` for each k, keyed `dynamics/<metric>`."""
    values = {"dynamics/alignment": alignment(u_t, u_final, alignment_k)}
    for k in overlap_k:
        values[f"dynamics/overlap_top{k}"] = subspace_overlap(u_t, u_final, k)
    return values


def trajectory_pca(leading: Sequence[torch.Tensor]) -> dict[str, float | None]:
    """Share of variance along the first and the first two principal components of a trajectory.

    leading: N vectors (m,), the top left singular vector of one module at N checkpoints, the
    last being the final one. Each is first flipped to point the same way as the final vector: a
    singular vector's sign is arbitrary, and an unaligned flip would read as a jump of length 2
    that swamps the real drift. Values are None with fewer than 2 vectors or when all of them
    coincide.
    """
    if len(leading) < 2:
        return {"dynamics/pca_pc1": None, "dynamics/pca_pc12": None}
    vectors = torch.stack(list(leading))  # (N, m)
    signs = torch.sign(vectors @ vectors[-1])  # (N,)
    signs[signs == 0] = 1.0
    aligned = vectors * signs[:, None]  # (N, m)
    centred = aligned - aligned.mean(0, keepdim=True)
    variance = torch.linalg.svdvals(centred).square()  # (min(N, m),)
    total = float(variance.sum())
    # Rounding of unit vectors that did not move leaves ~1e-16 per coordinate: no motion.
    if total <= 1e-10 * vectors.shape[0]:
        return {"dynamics/pca_pc1": None, "dynamics/pca_pc12": None}
    return {
        "dynamics/pca_pc1": float(variance[0]) / total,
        "dynamics/pca_pc12": float(variance[:2].sum()) / total,
    }
