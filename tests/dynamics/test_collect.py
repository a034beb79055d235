"""The tidy table: one row per (step, tensor), values equal to the metric functions' own.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.collect import collect
from foresight.dynamics.direction import direction_metrics, top_left_vectors
from foresight.dynamics.metrics import METRICS
from foresight.dynamics.reading import ModelFolder

from .series import planted_matrix
from .test_reading import write_folder

SMALL = DynamicsConfig(energy_top_k=[1, 2], overlap_k=[1, 3], alignment_k=5)


def gpt2_like(rng: np.random.Generator, update: float) -> dict[str, torch.Tensor]:
    """A GPT-2-style model (Conv1D weights stored (in, out)) plus `update` x a planted update."""
    shapes = {
        "transformer.wte.weight": (20, 8),
        "transformer.h.0.attn.c_attn.weight": (8, 24),
        "transformer.h.0.mlp.c_fc.weight": (8, 32),
        "transformer.h.0.mlp.c_proj.weight": (32, 8),
        "transformer.h.0.ln_1.weight": (8,),
        "transformer.ln_f.weight": (8,),
    }
    tensors = {}
    for index, (name, shape) in enumerate(shapes.items()):
        base_rng = np.random.default_rng(index)  # same base in every folder
        base = base_rng.standard_normal(shape)
        if len(shape) == 2:
            delta = planted_matrix(rng, *shape, np.array([1.0, 0.5, 0.25]))
        else:
            delta = rng.standard_normal(shape)
        tensors[name] = torch.tensor(base + update * delta, dtype=torch.float32)
    return tensors


@pytest.fixture
def series(tmp_path):
    """Base, a step-0 copy of the base (zero update) and two updated checkpoints."""
    base = write_folder(tmp_path / "base", gpt2_like(np.random.default_rng(9), 0.0))
    folders = [(0, write_folder(tmp_path / "s0", gpt2_like(np.random.default_rng(9), 0.0)))]
    for step, seed in ((5, 1), (10, 2)):
        folders.append(
            (
                step,
                write_folder(
                    tmp_path / f"s{step}", gpt2_like(np.random.default_rng(seed), 0.1 * step)
                ),
            )
        )
    return ModelFolder(base), [(step, ModelFolder(path)) for step, path in folders]


def test_one_row_per_step_and_tensor_matching_the_metric_functions(series):
    base, checkpoints = series
    collected = collect(base, checkpoints, SMALL)
    assert len(collected.modules) == 3 * 6
    assert [row["step"] for row in collected.modules[:6]] == [0] * 6  # grouped by step
    row = next(r for r in collected.modules if r["step"] == 5 and r["kind"] == "up")
    w_base = base.read(row["module"])
    w_t = checkpoints[1][1].read(row["module"])
    expected = {}
    expected |= METRICS["norm"](w_base, w_t)
    expected |= METRICS["spectrum"](w_base, w_t, energy_top_k=[1, 2])
    expected |= METRICS["sparsity"](w_base, w_t)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-6), key
    assert row["progress"] == 0.5 and row["layer"] == 0 and row["is_matrix"]


def test_direction_uses_output_space_and_final_is_self_aligned(series):
    base, checkpoints = series
    collected = collect(base, checkpoints, SMALL.model_copy(update={"svd_solver": "exact"}))
    name = "transformer.h.0.attn.c_attn.weight"
    w_base = base.read(name)
    # Conv1D stores (in, out); left singular vectors of the transposed update live in "out".
    u_t = top_left_vectors((checkpoints[1][1].read(name) - w_base).T, 5, "exact")
    u_final = top_left_vectors((checkpoints[2][1].read(name) - w_base).T, 5, "exact")
    assert u_t.shape == (24, 5)
    expected = direction_metrics(u_t, u_final, 5, [1, 3])
    row = next(r for r in collected.modules if r["step"] == 5 and r["module"] == name)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, abs=1e-5), key
    final = next(r for r in collected.modules if r["step"] == 10 and r["module"] == name)
    assert final["dynamics/alignment"] == pytest.approx(1.0)
    assert final["dynamics/overlap_top3"] == pytest.approx(1.0)


def test_zero_update_rows_are_null_never_nan(series):
    base, checkpoints = series
    collected = collect(base, checkpoints, SMALL)
    for row in collected.modules:
        for key, value in row.items():
            assert not (isinstance(value, float) and math.isnan(value)), (row["module"], key)
    zero = [row for row in collected.modules if row["step"] == 0]
    assert all(row["dynamics/frobenius"] == 0.0 for row in zero)
    matrices = [row for row in zero if row["kind"] != "norm"]
    assert all(row["dynamics/alignment"] is None for row in matrices)
    assert all(row["dynamics/effective_rank"] is None for row in matrices)
    norms = [row for row in collected.modules if row["kind"] == "norm"]
    assert all("dynamics/spectral_norm" not in row for row in norms)  # 1-D: no spectrum


def test_trajectory_has_one_row_per_matrix(series):
    base, checkpoints = series
    collected = collect(base, checkpoints, SMALL)
    assert [row["kind"] for row in collected.trajectory] == ["embedding", "qkv", "up", "down"]
    # Two moving checkpoints (step 0 has no direction): a 2-point trajectory is a line.
    assert all(row["dynamics/pca_pc1"] == pytest.approx(1.0) for row in collected.trajectory)
    assert set(collected.timings) >= {"time/read_s", "time/static_s", "time/direction_s"}


def test_threads_are_set_for_the_loop_and_restored():
    from foresight.dynamics.collect import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 leaves torch's setting alone
        assert torch.get_num_threads() == before
