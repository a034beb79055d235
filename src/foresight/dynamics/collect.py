"""Checkpoints x tensors -> one tidy table, one row per (checkpoint step, tensor name).

The loop runs tensor-outer, checkpoint-inner. For each tensor the base and the final checkpoint
are read once and the final update's top singular vectors are computed once, then every
checkpoint's copy of that tensor is compared against them. So only a few copies of one tensor are
alive at a time (base, final, the current and two previous checkpoints, a difference), never a
whole model. The attention and MLP matrices also feed the trajectory's straightness
(straightness.py), whose float64 sums run over all of them: one row per checkpoint.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.direction import direction_metrics, top_left_vectors, trajectory_pca
from foresight.dynamics.metrics import METRICS
from foresight.dynamics.reading import ModelFolder, TensorInfo, check_series, describe
from foresight.dynamics.straightness import Straightness, Walk
from foresight.log import progress

Row = dict[str, object]


@dataclass
class Clock:
    """Wall seconds spent per named phase, summed over many short intervals."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on `threads` torch CPU threads (0: leave as is), then restore the setting.

    Why: with MKL's OpenMP threads on a machine shared with other jobs (a training run, say), the
    threads spin against them and a small SVD can take 10-100x longer than on one thread.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Collected:
    """The tidy per-tensor table, the per-tensor trajectory PCA table, the straightness of the
    whole trajectory (one row per checkpoint, in series order) and where the time went."""

    modules: list[Row]
    trajectory: list[Row]
    straightness: list[Row]
    timings: dict[str, float]


def collect(
    base: ModelFolder, series: list[tuple[int, ModelFolder]], cfg: DynamicsConfig
) -> Collected:
    """Static and direction metrics of every tensor at every checkpoint of a series.

    series: (step, folder) in increasing step order; the last is the final checkpoint T, and
    progress = step / T.
    """
    check_series(base, [folder for _, folder in series])
    infos = describe(base, cfg.name_pattern)
    clock = Clock()
    per_tensor: list[list[Row]] = []
    trajectory: list[Row] = []
    straightness = Straightness(len(series))
    # Tensor by tensor, each read from every checkpoint: the bar counts tensors.
    with torch_threads(cfg.threads), progress("measuring tensors", len(infos)) as bar:
        for info in infos:
            rows, leading = _tensor_rows(info, base, series, cfg, clock, straightness)
            per_tensor.append(rows)
            if len(info.shape) == 2:
                with clock.phase("time/direction_s"):
                    pca = trajectory_pca(leading)
                row = {"module": info.name, "layer": info.layer, "kind": info.kind}
                trajectory.append({**row, **pca})
            bar.advance()
    # Regroup checkpoint-major so each step's rows are contiguous and in the same tensor order.
    modules = [rows[i] for i in range(len(series)) for rows in per_tensor]
    return Collected(modules, trajectory, straightness.rows(), dict(clock.seconds))


def _tensor_rows(
    info: TensorInfo,
    base: ModelFolder,
    series: list[tuple[int, ModelFolder]],
    cfg: DynamicsConfig,
    clock: Clock,
    straightness: Straightness,
) -> tuple[list[Row], list[torch.Tensor]]:
    """One tensor's row at every checkpoint, and its leading left singular vectors (for PCA).

    An attention or MLP matrix also adds its dot products to `straightness`.
    """
    final_step = series[-1][0]
    options = {
        "norm": {},
        "spectrum": {"energy_top_k": cfg.energy_top_k},
        "sparsity": {"sparsity_abs": cfg.sparsity_abs, "sparsity_rel": cfg.sparsity_rel},
    }
    with clock.phase("time/read_s"):
        w_base = base.read(info.name)
        w_final = series[-1][1].read(info.name)
    final_vectors = _vectors(info, w_base, w_final, cfg, clock)
    walk: Walk | None = straightness.walk(w_base, w_final) if info.is_matrix else None
    rows, leading = [], []
    for index, (step, folder) in enumerate(series):
        is_final = index == len(series) - 1
        if is_final:
            w_t = w_final
        else:
            with clock.phase("time/read_s"):
                w_t = folder.read(info.name)
        row: Row = {
            "step": step,
            "progress": step / final_step,
            "module": info.name,
            "layer": info.layer,
            "kind": info.kind,
            "is_matrix": info.is_matrix,
        }
        if walk is not None:
            with clock.phase("time/straightness_s"):
                walk.step(w_t)
        with clock.phase("time/static_s"):
            for family, metric in METRICS.items():
                row.update(metric(w_base, w_t, **options[family]))
        if len(info.shape) == 2:
            # The final checkpoint's vectors are reused, not recomputed.
            u_t = final_vectors if is_final else _vectors(info, w_base, w_t, cfg, clock)
            row.update(_direction_values(u_t, final_vectors, cfg, clock))
            if u_t is not None and final_vectors is not None:
                leading.append(u_t[:, 0])
        rows.append(row)
    return rows, leading


def _vectors(
    info: TensorInfo, w_base: torch.Tensor, w_t: torch.Tensor, cfg: DynamicsConfig, clock: Clock
) -> torch.Tensor | None:
    """Top-K left singular vectors of dW in output space, (m, K); None for 1-D or zero updates."""
    if len(info.shape) != 2:
        return None
    with clock.phase("time/direction_s"):
        delta_w = w_t - w_base  # (m, n), or (n, m) for a Conv1D weight
        if not bool(delta_w.any()):
            return None
        if info.transposed:
            delta_w = delta_w.T  # GPT-2 Conv1D stores (in, out); left vectors live in "out"
        k = max(cfg.alignment_k, *cfg.overlap_k)
        return top_left_vectors(delta_w, k, cfg.svd_solver, cfg.svd_niter, cfg.seed)


def _direction_values(
    u_t: torch.Tensor | None, u_final: torch.Tensor | None, cfg: DynamicsConfig, clock: Clock
) -> dict[str, float | None]:
    if u_t is None or u_final is None:
        # No update at t or at T: no direction to compare (null, see docs/metrics.md).
        keys = ["dynamics/alignment", *(f"dynamics/overlap_top{k}" for k in cfg.overlap_k)]
        return dict.fromkeys(keys)
    with clock.phase("time/direction_s"):
        return direction_metrics(u_t, u_final, cfg.alignment_k, cfg.overlap_k)
