"""The trajectory's straightness: segment cosines and the early direction's share of ‖ΔW_T‖.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/dynamics/test_straightness.py

References are brute force in float64 on the flattened attention/MLP matrices. Tolerances:

- Checkpoints are float32. Rounding a weight moves it by at most u32 = 2^-24 of its own size, so a
  segment s = W_t − W_(t−1) built from rounded weights is off by ‖e‖ <= u32 (‖W_t‖ + ‖W_(t−1)‖),
  which can be large next to ‖s‖ when the update is small against the weights. Turning a into
  a + e moves its unit vector by at most 2‖e‖/‖a‖, so a cosine moves by at most
  2‖e_a‖/‖a‖ + 2‖e_b‖/‖b‖ (`rounding_bound`). That bounds a comparison with the exact geometry.
- Against numpy on the same float32 weights only float64 arithmetic differs: differences of
  float32 numbers are exact in float64, and a dot product of n terms is off by at most
  n u64 ‖a‖‖b‖ (u64 = 2^-53) whatever the summation order, so each side's cosine is within
  3 n u64 of the exact one (the dot and two norms): `SUM_BOUND` n below.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from foresight.config_sections import DynamicsConfig
from foresight.dynamics import straightness as straightness_module
from foresight.dynamics.collect import collect
from foresight.dynamics.findings import findings
from foresight.dynamics.reading import ModelFolder
from foresight.dynamics.straightness import EARLY, SEGMENT, Straightness
from foresight.dynamics.tables import read_csv

from .test_reading import write_folder

U32 = 2.0**-24
U64 = 2.0**-53
# Attention and MLP matrices (what the measures cover), then tensors they must leave out.
MATRICES = {
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (16, 8),
    "model.layers.0.mlp.down_proj.weight": (8, 16),
    "model.layers.1.self_attn.o_proj.weight": (8, 8),
}
OTHERS = {"model.embed_tokens.weight": (20, 8), "model.layers.0.input_layernorm.weight": (8,)}
SIZE = sum(math.prod(shape) for shape in MATRICES.values())  # 448 entries


def sum_bound(n: int) -> float:
    """Two float64 cosines of n-term dot products differ by at most 2 x 3 n u64."""
    return 6 * n * U64


def split(flat: np.ndarray) -> dict[str, torch.Tensor]:
    """A flat float64 vector over MATRICES as float32 tensors (the rounding of a checkpoint)."""
    tensors, start = {}, 0
    for name, shape in MATRICES.items():
        size = math.prod(shape)
        tensors[name] = torch.tensor(flat[start : start + size].reshape(shape), dtype=torch.float32)
        start += size
    return tensors


def flatten(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """The float32 matrices of a checkpoint as one float64 vector, in MATRICES order."""
    return np.concatenate([tensors[name].double().numpy().ravel() for name in MATRICES])


def measure(points: list[dict[str, torch.Tensor]]) -> list[dict[str, float | None]]:
    """Straightness fed tensor by tensor, as collect does; points[0] is the base."""
    sums = Straightness(len(points) - 1)
    for name in MATRICES:
        walk = sums.walk(points[0][name], points[-1][name])
        for point in points[1:]:
            walk.step(point[name])
    return sums.rows()


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return None if norms == 0 else float(a @ b / norms)


def reference(flats: list[np.ndarray]) -> tuple[list[float | None], list[float | None]]:
    """Brute-force segment cosines and early shares of flat float64 points (flats[0]: base)."""
    segments = [after - before for before, after in itertools.pairwise(flats)]
    joints = [cosine(a, b) for a, b in itertools.pairwise(segments)] + [None]
    early = [cosine(flats[-1] - flats[0], point - flats[0]) for point in flats[1:]]
    return joints, early


def rounding_bound(flats: list[np.ndarray], exact_segments: list[np.ndarray], j: int) -> float:
    """Bound on how far rounding to float32 moves the cosine of segments j and j + 1."""
    total = 0.0
    for k in (j, j + 1):
        error = U32 * (np.linalg.norm(flats[k]) + np.linalg.norm(flats[k + 1]))
        total += 2 * error / np.linalg.norm(exact_segments[k])
    return total + sum_bound(SIZE)


def test_a_straight_series_is_straight_at_every_step():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(SIZE)
    direction = rng.standard_normal(SIZE)
    scales = [0.01, 0.02, 0.04, 0.07, 0.1]  # small updates: float32 rounding shows
    exact = [base] + [base + c * direction for c in scales]
    rows = measure([split(flat) for flat in exact])
    segments = [after - before for before, after in itertools.pairwise(exact)]
    for j, row in enumerate(rows[:-1]):
        assert row[SEGMENT] == pytest.approx(1.0, abs=rounding_bound(exact, segments, j))
        # ΔW_t is a multiple of ΔW_T: the bound of the segments' cosine covers it (larger norms).
        assert row[EARLY] == pytest.approx(1.0, abs=rounding_bound(exact, segments, j))
    assert rows[-1][SEGMENT] is None and rows[-1][EARLY] == pytest.approx(1.0, abs=sum_bound(SIZE))
    # Weights representable exactly in float32 leave only float64's rounding: a few ulps.
    whole = [np.round(8 * base) + c * np.round(8 * direction) for c in (0, 1, 2, 5)]
    for row in measure([split(flat) for flat in whole]):
        assert row[EARLY] == pytest.approx(1.0, abs=4 * U64)
        assert row[SEGMENT] is None or row[SEGMENT] == pytest.approx(1.0, abs=4 * U64)


def test_a_turn_by_a_known_angle_gives_its_cosine():
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.standard_normal((SIZE, 3)))  # e1, e2, e3 orthonormal
    theta, phi = math.radians(60), math.radians(120)
    # In (e1, e2, e3) coordinates: a first segment, a turn by theta, then a turn back by phi.
    s1 = np.array([1.0, 0.0, 0.0])
    s2 = 1.5 * np.array([math.cos(theta), math.sin(theta), 0.0])
    s3 = 2.0 * (math.cos(phi) * s2 / 1.5 + math.sin(phi) * np.array([0.0, 0.0, 1.0]))
    coordinates = [s1, s1 + s2, s1 + s2 + s3]  # ΔW_t
    base = rng.standard_normal(SIZE)
    exact = [base] + [base + basis @ c for c in coordinates]
    rows = measure([split(flat) for flat in exact])
    segments = [basis @ s for s in (s1, s2, s3)]
    assert rows[0][SEGMENT] == pytest.approx(0.5, abs=rounding_bound(exact, segments, 0))
    assert rows[1][SEGMENT] == pytest.approx(-0.5, abs=rounding_bound(exact, segments, 1))
    assert rows[2][SEGMENT] is None
    final = coordinates[-1]
    for row, delta in zip(rows, coordinates, strict=True):
        expected = delta @ final / (np.linalg.norm(delta) * np.linalg.norm(final))
        # Rounding bound for ΔW_t and ΔW_T: both measured from the base.
        error = 2 * U32 * (2 * np.linalg.norm(base) + 2 * np.linalg.norm(base + basis @ final))
        tolerance = error / min(np.linalg.norm(delta), np.linalg.norm(final)) + sum_bound(SIZE)
        assert row[EARLY] == pytest.approx(expected, abs=tolerance)
    assert rows[0][EARLY] == pytest.approx(s1 @ final / np.linalg.norm(final), abs=1e-4)


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_random_series_match_numpy_on_the_flat_vectors(monkeypatch, chunk):
    # Chunks of 7 entries split every tensor at odd places: the sums must not care.
    monkeypatch.setattr(straightness_module, "CHUNK", chunk)
    rng = np.random.default_rng(2)
    flats = [rng.standard_normal(SIZE)]
    for _ in range(5):
        flats.append(flats[-1] + 0.05 * rng.standard_normal(SIZE) + 0.03)
    points = [split(flat) for flat in flats]
    rows = measure(points)
    joints, early = reference([flatten(point) for point in points])
    for row, joint, share in zip(rows, joints, early, strict=True):
        assert row[SEGMENT] == pytest.approx(joint, abs=sum_bound(SIZE))
        assert row[EARLY] == pytest.approx(share, abs=sum_bound(SIZE))
    assert 0.1 < min(joints[:-1]) < max(joints[:-1]) < 0.9  # a real, not a trivial, test


def test_collect_covers_the_matrices_only_and_zero_segments_are_null(tmp_path):
    rng = np.random.default_rng(3)
    base = split(rng.standard_normal(SIZE))
    for name, shape in OTHERS.items():
        base[name] = torch.tensor(rng.standard_normal(shape), dtype=torch.float32)
    points, flat = [base], flatten(base)  # step 0: a copy of the base, a zero update
    for _ in (5, 10, 20):
        flat = flat + 0.1 * rng.standard_normal(SIZE)
        # Large, unrelated moves of the embeddings and norms: included, they would dominate.
        points.append(split(flat) | {n: base[n] + torch.randn(base[n].shape) for n in OTHERS})
    series = [
        (step, ModelFolder(write_folder(tmp_path / f"s{step}", point)))
        for step, point in zip((0, 5, 10, 20), points, strict=True)
    ]
    base_folder = ModelFolder(write_folder(tmp_path / "base", base))
    collected = collect(base_folder, series, DynamicsConfig())
    rows = collected.straightness
    assert rows[0] == {SEGMENT: None, EARLY: None}  # step 0: no update, no direction
    joints, early = reference([flatten(point) for point in [base, *points]])
    bound = sum_bound(SIZE)
    for row, joint, share in zip(rows, joints, early, strict=True):
        assert row[SEGMENT] == (None if joint is None else pytest.approx(joint, abs=bound))
        assert row[EARLY] == (None if share is None else pytest.approx(share, abs=bound))
    whole = [
        np.concatenate([flatten(p)] + [p[n].double().numpy().ravel() for n in OTHERS])
        for p in [base, *points]
    ]
    assert abs(reference(whole)[1][2] - early[2]) > 0.05  # the selection matters here
    assert "time/straightness_s" in collected.timings


def test_overall_csv_report_and_summary_carry_both_measures(report, llama_series):
    out, summary = report
    overall = read_csv(out / "overall.csv")
    assert [row["step"] for row in overall] == [10, 20, 40]
    assert overall[-1][SEGMENT] is None and overall[-1][EARLY] == pytest.approx(1.0, abs=1e-12)
    # The series' updates drift towards the final one (series.py): compare with the brute force.
    from safetensors.torch import load_file

    base_dir, checkpoints = llama_series

    def matrices(folder):
        tensors = {}
        for file in sorted(folder.glob("*.safetensors")):
            tensors |= load_file(file)
        names = sorted(n for n in tensors if n.endswith("proj.weight"))
        return np.concatenate([tensors[n].double().numpy().ravel() for n in names])

    flats = [matrices(base_dir)] + [matrices(folder) for _, folder in checkpoints]
    joints, early = reference(flats)
    bound = sum_bound(flats[0].size)
    for row, joint, share in zip(overall, joints, early, strict=True):
        assert row[SEGMENT] == (None if joint is None else pytest.approx(joint, abs=bound))
        assert row[EARLY] == pytest.approx(share, abs=bound)
    assert "figures/straightness.png" in summary["figures"]
    page = (out / "report.html").read_text()
    table = page[page.index("<h2>Final checkpoint") :].split("</table>")[0]
    at = table.index(f"<code>{EARLY}</code>")
    assert "1 by definition" in table[at - 400 : at]
    assert f"<code>{SEGMENT}</code>" not in table  # null at the final checkpoint: left out
    assert "Consecutive update segments meet at a median cosine of" in page


def _overall(segments, shares):
    steps = [10 * (i + 1) for i in range(len(shares))]
    return [
        {"step": step, "progress": step / steps[-1], SEGMENT: segment, EARLY: share}
        for step, segment, share in zip(steps, segments, shares, strict=True)
    ]


def test_the_summary_sentence_is_built_from_the_numbers():
    tables = {"kinds": [], "layers": []}
    text = findings({**tables, "overall": _overall([0.9, 0.95, 0.8, None], [0.6, 0.8, 0.9, 1.0])})
    assert "meet at a median cosine of 0.9 (an angle of 25.8°" in text
    assert "over 3 checkpoints, the sharpest turn at step 30 (cosine 0.8)" in text
    assert "at step 10 (25% of the way through training) explains 60% of the final" in text
    assert "perpendicular to it is 80%" in text
    # 0.9 >= the map's 0.7, at its spacing (10 steps): the straight regime's verdict; then the
    # band between 0.5 and 0.7, and the curved one under 0.5.
    assert "as straight as plain OPD was at low learning rates" in text
    assert "raised final accuracy at the same learning rate" in text and "rougher" not in text
    between = findings({**tables, "overall": _overall([0.5, 0.65, 0.74, None], [0.6, 0.8, 0.9, 1])})
    assert (
        "between the straight and the curved runs" in between and "(median 0.5 to 0.7)" in between
    )
    curved = findings({**tables, "overall": _overall([0.3, 0.45, 0.74, None], [0.6, 0.8, 0.9, 1])})
    assert "as curved as plain OPD was at tuned learning rates" in curved
    assert "(median under 0.5)" in curved and "unlikely to save steps" in curved
    wide = _overall([0.9, 0.95, 0.8, None], [0.6, 0.8, 0.9, 1.0])
    for index, row in enumerate(wide):
        row["step"] = 50 * (index + 1)
    assert "The map's checkpoints were 10 steps apart, this run's 50" in findings(
        {**tables, "overall": wide}
    )
    back = findings({**tables, "overall": _overall([-0.5, None], [-0.2, 1.0])})
    assert "meet at step 10 with cosine -0.5 (an angle of 120°" in back
    assert "points against the final update and explains -20%" in back
    # No earlier checkpoint and no joint: no sentence about straightness at all.
    lone = findings({**tables, "overall": _overall([None], [1.0])})
    assert "segments" not in lone and "direction at step" not in lone


def test_the_figure_needs_an_earlier_checkpoint(tmp_path):
    from foresight.dynamics.plots import make_figures

    tables = {"kinds": [], "layers": [], "trajectory": []}
    lone = make_figures({**tables, "overall": _overall([None], [1.0])}, tmp_path)
    assert "straightness" not in lone
    drawn = make_figures({**tables, "overall": _overall([0.7, None], [0.5, 1.0])}, tmp_path)
    assert drawn == ["straightness"]
