"""The claims' verdict rule against hand-made numbers, and the Welch interval against float64 brute force.

Run: .venv/bin/python -m pytest tests/compare/test_claims.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from foresight.compare.claims import (
    CLAIMS,
    edge_layer_share,
    embedding_swap_loss,
    interval,
    judge,
    rescaled_recovery,
    t95,
    verdict,
    window_difference,
)


def test_welch_interval_matches_a_float64_reference():
    a, b = [0.93, 0.95, 0.91], [0.80, 0.78, 0.86, 0.79]
    d, half = interval(a, b, 0.0)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)  # Welch-Satterthwaite
    assert d == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    assert half == pytest.approx(t95(dof) * math.sqrt(va + vb), rel=1e-12)
    assert math.floor(dof) == 4 and t95(dof) == pytest.approx(2.776)
    one_sample_d, one_sample_half = interval(a, None, 0.9)
    assert one_sample_d == pytest.approx(np.mean(a) - 0.9, abs=1e-12)
    assert one_sample_half == pytest.approx(4.303 * np.std(a, ddof=1) / math.sqrt(3), rel=1e-12)


def test_verdicts_follow_the_interval():
    assert verdict(0.10, 0.05) == "holds"
    assert verdict(-0.10, 0.05) == "does not hold"
    assert verdict(0.03, 0.05) == "inconclusive"
    assert verdict(0.5, None) == "inconclusive"  # one seed: no spread to judge by
    assert interval([0.9], [0.8], 0.0)[1] is None


def _runs(**values):
    """method -> per-seed measures, every measure of a seed set from values[method][seed]."""
    keys = {claim.measure for claim in CLAIMS}
    return {
        method: [dict.fromkeys(keys, v) for v in per_seed] for method, per_seed in values.items()
    }


def test_judge_uses_the_claimed_direction():
    rows = {r["measure"]: r for r in judge(_runs(opd=[0.9, 0.92, 0.91], rl=[0.5, 0.52, 0.49]))}
    assert rows["top1pct_energy"]["verdict"] == "holds"  # opd > rl, as claimed
    assert rows["effective_rank"]["verdict"] == "does not hold"  # claimed opd < rl
    assert rows["edge_layer_share"]["verdict"] == "does not hold"  # claimed rl > opd
    # Threshold claims: swapping embeddings loses 0.91 > 0.10 of the gain; rescaled 0.91 >= 0.6.
    assert rows["embedding_swap_loss"]["verdict"] == "does not hold"
    assert rows["rescaled_early_recovery"]["verdict"] == "holds"
    assert rows["top1pct_energy"]["opd"]["n"] == 3


def test_a_missing_method_is_reported_not_judged():
    rows = {r["measure"]: r for r in judge(_runs(opd=[0.9, 0.92], sft=[0.5, 0.4]))}
    assert rows["top1pct_energy"]["verdict"] == "not measured (rl has no value)"
    assert rows["mlp_minus_attention"]["verdict"] == "holds"  # opd only: 0.91 > 0


def test_measures_from_probe_and_layer_rows():
    layers = [
        {"step": s, "layer": layer, "dynamics/allocation": share}
        for s in (5, 10)
        for layer, share in enumerate([0.4, 0.1, 0.1, 0.2])
    ]
    # 4 layers: the edge quarter is layer 0 and layer 3 -> (0.4 + 0.2) / 0.8.
    assert edge_layer_share(layers) == pytest.approx(0.75)
    window = [
        {"part": "mlp", "centre": 0, "probe/gain_recovered": 0.8},
        {"part": "mlp", "centre": 1, "probe/gain_recovered": 0.6},
        {"part": "attention", "centre": 0, "probe/gain_recovered": 0.2},
        {"part": "attention", "centre": 1, "probe/gain_recovered": None},
    ]
    assert window_difference(window) == pytest.approx(0.6)  # centre 1 lacks an attention value
    swap = [{"variant": "final_base_embedding", "probe/gain_recovered": 0.97}]
    assert embedding_swap_loss(swap) == pytest.approx(0.03)
    rescaling = [
        {"beta": 1.0, "progress": p, "probe/gain_recovered": g}
        for p, g in ((0.06, 0.5), (0.12, 0.7), (1.0, 1.0))
    ] + [{"beta": 0.0, "progress": 0.1, "probe/gain_recovered": 0.1}]
    assert rescaled_recovery(rescaling) == pytest.approx(0.7)  # nearest to 10%, beta = 1
