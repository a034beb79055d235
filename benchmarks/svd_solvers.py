"""Exact SVD against the randomized solver for the analysis' top-K left singular vectors: time per
matrix size, and the error of the paper's top-20 alignment against a float64 reference on an early,
flat-spectrum update (where the randomized solver is least accurate). Picks the size up to which the
exact solver is no slower, the crossover that `dynamics.svd_solver: auto` uses.

Run: .venv/bin/python benchmarks/svd_solvers.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from foresight.dynamics.direction import alignment, top_left_vectors

# (rows, cols) of the attention/MLP matrices of the embedded models and SmolLM2-135M, and larger.
SHAPES = [(64, 64), (128, 64), (128, 128), (384, 128), (128, 384), (192, 192), (256, 256), (576, 576), (1536, 576), (576, 1536), (1024, 1024),
          (2048, 2048), (2048, 5632)]  # fmt: skip
K = 20


def early_update(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A flat-spectrum update: a weak rank-8 direction under isotropic noise of similar energy."""
    generator = torch.Generator().manual_seed(seed)
    signal = torch.randn(rows, 8, generator=generator) @ torch.randn(8, cols, generator=generator)
    noise = torch.randn(rows, cols, generator=generator) * (8 / min(rows, cols)) ** 0.5 * 2
    return (signal / signal.norm() + noise / noise.norm()).float()


def seconds(function, repeats: int) -> float:
    function()  # warm-up: kernel selection, allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def alignment_error(delta: torch.Tensor, final: torch.Tensor, solver: str, niter: int) -> float:
    """|alignment(solver) - alignment(float64 exact)| between an early and a final update."""
    reference = alignment(
        top_left_vectors(delta.double(), K, "exact"),
        top_left_vectors(final.double(), K, "exact"),
        K,
    )
    measured = alignment(
        top_left_vectors(delta, K, solver, niter), top_left_vectors(final, K, solver, niter), K
    )
    return abs(measured - reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_out = []
    print(f"{'shape':>12} {'exact s':>9} {'lowrank4 s':>10} {'lowrank8 s':>10} "
          f"{'exact/lr4':>9} {'err exact':>9} {'err lr4':>8} {'err lr8':>8}")  # fmt: skip
    for rows, cols in SHAPES:
        delta, final = early_update(rows, cols, 0), early_update(rows, cols, 1)
        final = final + 0.5 * delta  # the early direction is part of the final update
        timing = {
            name: seconds(lambda s=solver, n=niter: top_left_vectors(delta, K, s, n), args.repeats)
            for name, solver, niter in (
                ("exact", "exact", 0), ("lowrank4", "lowrank", 4), ("lowrank8", "lowrank", 8)
            )
        }  # fmt: skip
        errors = {
            name: alignment_error(delta, final, solver, niter)
            for name, solver, niter in (
                ("exact", "exact", 0), ("lowrank4", "lowrank", 4), ("lowrank8", "lowrank", 8)
            )
        }  # fmt: skip
        row = {"shape": [rows, cols], "seconds": timing, "alignment_error": errors}
        rows_out.append(row)
        print(
            f"{rows:>5}x{cols:<6} {timing['exact']:9.4f} {timing['lowrank4']:10.4f} "
            f"{timing['lowrank8']:10.4f} {timing['exact'] / timing['lowrank4']:9.2f} "
            f"{errors['exact']:9.1e} {errors['lowrank4']:8.1e} {errors['lowrank8']:8.1e}"
        )
    info = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "rows": rows_out,
    }
    print(json.dumps(info))


if __name__ == "__main__":
    main()
