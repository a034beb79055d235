"""Functional probes through a fake scorer (a function of the weights), and exact restore.

    .venv/bin/python -m pytest tests/dynamics -q

The fake scorer's accuracy is 1 - ||theta - theta_T|| / ||theta_base - theta_T||, so every
probe's expected score follows from update norms alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.patch import WeightPatch, load_model
from foresight.dynamics.probes import rank_truncate, rescale_factor, run_probes
from foresight.dynamics.reading import ModelFolder, describe
from foresight.errors import UserError

from .series import DistanceScorer

CFG = DynamicsConfig(
    window=0, scaling_alphas=[0.0, 0.5, 1.0], truncation_pct=[10.0, 100.0], rescale_betas=[0.0, 1.0]
)


@pytest.fixture(scope="module")
def probed(llama_series):
    base_dir, checkpoints = llama_series
    model = load_model(base_dir)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    base = ModelFolder(base_dir)
    series = [(step, ModelFolder(path)) for step, path in checkpoints]
    scorer = DistanceScorer(base_dir, checkpoints[-1][1])
    tables = run_probes(model, describe(base), series, CFG, scorer)
    return model, before, tables, base, series


def final_norms(base, series):
    final = series[-1][1]
    return {name: float((final.read(name) - base.read(name)).norm()) for name in base.shapes}


def test_weights_are_restored_bit_for_bit(probed):
    model, before, _, _, _ = probed
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def test_restore_happens_even_when_the_scorer_fails(probed):
    model, before, _, _, _ = probed
    patch = WeightPatch(model, ["model.embed_tokens.weight"])

    def broken(_model):
        raise RuntimeError("scorer crashed")

    with pytest.raises(RuntimeError):
        patch.score([("model.embed_tokens.weight", torch.ones(96, 32))], broken)
    assert torch.equal(
        model.state_dict()["model.embed_tokens.weight"], before["model.embed_tokens.weight"]
    )
    with pytest.raises(UserError, match="no parameter"):
        WeightPatch(model, ["not.a.parameter"])


def test_scorer_keys_become_score_columns(probed):
    model = probed[0]
    patch = WeightPatch(model, [])
    task_style = patch.score([], lambda m: {"eval/accuracy": 0.5, "eval/kl_reverse": 0.1})
    assert task_style == {"score/accuracy": 0.5, "score/kl_reverse": 0.1}
    assert patch.score([], lambda m: {"accuracy": 1, "kl/reverse": 2}) == {
        "score/accuracy": 1.0,
        "score/kl/reverse": 2.0,
    }
    with pytest.raises(ValueError, match="must return 'accuracy'"):
        patch.score([], lambda m: {"loss": 1.0})


def test_reference_and_scaling(probed):
    _, _, tables, _, _ = probed
    reference = {row["variant"]: row for row in tables["reference"]}
    assert reference["base"]["score/accuracy"] == pytest.approx(0.0, abs=1e-6)
    assert reference["final"]["score/accuracy"] == pytest.approx(1.0, abs=1e-6)
    for row in tables["scaling"]:
        # Along the final update the fake accuracy is exactly alpha.
        assert row["score/accuracy"] == pytest.approx(row["alpha"], abs=1e-5)
        assert row["probe/gain_recovered"] == pytest.approx(row["alpha"], abs=1e-5)
    assert "score/kl/reverse" in tables["scaling"][0]


def test_embedding_swap_and_window(probed):
    _, _, tables, base, series = probed
    norms = final_norms(base, series)
    total = math.sqrt(sum(v**2 for v in norms.values()))
    (swap,) = tables["embedding_swap"]  # tied lm_head: no separate row
    assert swap["variant"] == "final_base_embedding"
    expected = 1 - norms["model.embed_tokens.weight"] / total
    assert swap["score/accuracy"] == pytest.approx(expected, abs=1e-5)
    window = tables["window"]
    assert len(window) == 2 * 3  # (mlp, attention) x 3 layers, w = 0
    row = next(r for r in window if r["part"] == "mlp" and r["centre"] == 1)
    applied = [f"model.layers.1.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    applied_sq = sum(norms[name] ** 2 for name in applied)
    assert row["probe/layer_update_norm"] == pytest.approx(math.sqrt(applied_sq), rel=1e-5)
    expected = 1 - math.sqrt(total**2 - applied_sq) / total
    assert row["score/accuracy"] == pytest.approx(expected, abs=1e-5)


def test_truncation_and_rescaling(probed):
    _, _, tables, base, series = probed
    full = next(r for r in tables["truncation"] if r["pct"] == 100.0 and r["side"] == "top")
    assert full["score/accuracy"] == pytest.approx(1.0, abs=1e-5)
    assert len(tables["truncation"]) == 4
    raw = next(r for r in tables["rescaling"] if r["step"] == 10 and r["beta"] == 0.0)
    final = series[-1][1]
    distance = math.sqrt(
        sum(float((series[0][1].read(n) - final.read(n)).square().sum()) for n in base.shapes)
    )
    scale = math.sqrt(
        sum(float((base.read(n) - final.read(n)).square().sum()) for n in base.shapes)
    )
    assert raw["score/accuracy"] == pytest.approx(1 - distance / scale, abs=1e-5)
    last = [r for r in tables["rescaling"] if r["step"] == 40]
    assert [r["probe/gain_recovered"] for r in last] == [pytest.approx(1.0)] * 2
    assert raw["progress"] == 0.25


def test_rank_truncate_against_numpy():
    rng = np.random.default_rng(0)
    delta = rng.standard_normal((12, 9))
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    for pct, side, kept in ((10.0, "top", slice(0, 1)), (30.0, "bottom", slice(6, 9))):
        part = (u[:, kept] * s[kept]) @ vh[kept]
        expected = part * np.linalg.norm(delta) / np.linalg.norm(part)
        result = rank_truncate(torch.from_numpy(delta), pct, side).numpy()
        np.testing.assert_allclose(result, expected, atol=1e-10)
    rank_one = np.outer(rng.standard_normal(6), rng.standard_normal(5))
    # The bottom of a rank-1 update is rounding noise: zero, not noise blown up to full norm.
    assert not rank_truncate(torch.from_numpy(rank_one), 20.0, "bottom").any()


def test_rescale_factor():
    assert rescale_factor(0.0, 4.0, 2.0) == 1.0
    assert rescale_factor(1.0, 4.0, 2.0) == 2.0
    assert rescale_factor(0.5, 4.0, 2.0) == 1.5
    assert rescale_factor(1.0, 4.0, 0.0) == 1.0
