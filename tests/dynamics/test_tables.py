"""Aggregate tables from hand-made module rows, and the CSV round trip.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import math

import pytest

from foresight.dynamics.tables import read_csv, summarize, write_csv


def module_row(step, module, layer, kind, frobenius, rank, is_matrix=True):
    return {
        "step": step,
        "progress": step / 20,
        "module": module,
        "layer": layer,
        "kind": kind,
        "is_matrix": is_matrix,
        "dynamics/frobenius": frobenius,
        "dynamics/effective_rank": rank,
    }


def rows_at(step, scale):
    return [
        module_row(step, "embed", None, "embedding", 1.0 * scale, 9.0, is_matrix=False),
        module_row(step, "l0.q", 0, "q", 2.0 * scale, 2.0),
        module_row(step, "l0.up", 0, "up", 1.0 * scale, 4.0),
        module_row(step, "l0.norm", 0, "norm", 1.0 * scale, None, is_matrix=False),
        module_row(step, "l1.up", 1, "up", 3.0 * scale, None),
    ]


def test_summarize_means_shares_and_spearman():
    modules = rows_at(10, 1.0) + rows_at(20, 2.0)
    tables = summarize(modules)
    overall = tables["overall"]
    assert [row["step"] for row in overall] == [10, 20]
    # Mean over attention/MLP matrices only, Nones left out: (2 + 4) / 2.
    assert overall[0]["dynamics/effective_rank"] == pytest.approx(3.0)
    assert overall[0]["dynamics/update_norm"] == pytest.approx(math.sqrt(1 + 4 + 1 + 1 + 9))
    assert overall[0]["dynamics/allocation_mlp"] == pytest.approx(10 / 16)
    assert overall[0]["dynamics/allocation_attention"] == pytest.approx(4 / 16)
    # Step 20 is step 10 scaled: same ranking of shares.
    assert overall[0]["dynamics/allocation_spearman"] == pytest.approx(1.0)
    assert modules[0]["dynamics/allocation"] == pytest.approx(1 / 16)
    kinds = {row["kind"]: row for row in tables["kinds"] if row["step"] == 10}
    assert kinds["up"]["dynamics/allocation"] == pytest.approx(10 / 16)
    assert kinds["up"]["count"] == 2
    assert sum(row["dynamics/allocation"] for row in kinds.values()) == pytest.approx(1.0)
    layers = [row for row in tables["layers"] if row["step"] == 10]
    assert [row["layer"] for row in layers] == [0, 1]
    assert layers[0]["dynamics/allocation"] == pytest.approx(6 / 16)
    assert layers[0]["dynamics/allocation_mlp"] == pytest.approx(1 / 16)
    assert layers[1]["dynamics/effective_rank"] is None


def test_zero_update_step_has_null_shares_not_nan():
    tables = summarize(rows_at(0, 0.0) + rows_at(20, 1.0))
    first = tables["overall"][0]
    assert first["dynamics/allocation_spearman"] is None
    assert first["dynamics/allocation_mlp"] is None
    assert first["dynamics/update_norm"] == 0.0


def test_csv_round_trip_keeps_types_and_nulls(tmp_path):
    rows = [{"step": 3, "kind": "q", "x": 0.25, "flag": True, "missing": None}, {"step": 4}]
    write_csv(tmp_path / "t.csv", rows)
    back = read_csv(tmp_path / "t.csv")
    assert back[0] == rows[0]
    assert back[1] == {"step": 4, "kind": None, "x": None, "flag": None, "missing": None}
