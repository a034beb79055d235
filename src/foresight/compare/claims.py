"""The paper's claims, measured per run and judged by a rule written here, never by hand.

Each run contributes one number per measure (`run_measures`, from its analysis folder). A claim
compares the seeds of two methods (or of one method against a threshold) with Welch's t interval:

    d  = mean_a - mean_b            (or mean_a - threshold)
    se = sqrt(s_a^2/n_a + s_b^2/n_b)  (sample variances; or s_a/sqrt(n_a))
    t  = the two-sided 95% Student-t quantile at the Welch degrees of freedom (rounded down)

Verdict, with d signed so that positive is the claimed direction:
    holds            d - t*se > 0   (the whole interval on the claimed side)
    does not hold    d + t*se < 0   (the whole interval on the other side)
    inconclusive     otherwise, or when a method has fewer than 2 seeds (no spread to judge by)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from foresight.compare.plan import EARLY_PROGRESS
from foresight.dynamics.report import load_tables

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip

# Thresholds of the claims that are about a level rather than a comparison.
EMBEDDING_LOSS_MAX = 0.10  # "embeddings barely matter": swapping them back loses < 10% of the gain
RESCALED_RECOVERY_MIN = 0.60  # "about 80%": we test the substance, at least 60% of the final gain
EDGE_LAYER_FRACTION = 0.25  # "bottom and top layers": the first and last quarter of the layers

MEASURES = {
    "top1pct_energy": "top-1% energy ratio of the final update (mean over attention/MLP matrices)",
    "spectral_ratio": "σ1 / ‖ΔW‖_F of the final update",
    "effective_rank": "effective rank of the final update",
    "spectral_norm": "σ1 of the final update",
    "early_alignment": "mean |cos(u_k(t), u_k(T))|, k ≤ 20, over checkpoints in the first 30%",
    "early_overlap": "mean subspace overlap with the final update over checkpoints in the first 30%",
    "edge_layer_share": "share of the layers' squared update in the first and last quarter of layers",
    "mlp_minus_attention": "window probe: MLP-only minus attention-only share of the gain recovered",
    "embedding_swap_loss": "share of the final gain lost when the embeddings go back to the base",
    "rescaled_early_recovery": "share of the final gain recovered by the ~10% checkpoint, rescaled",
}


@dataclass(frozen=True)
class Claim:
    text: str
    measure: str
    method: str
    other: str | None  # the method compared against; None for a threshold claim
    direction: int  # +1: the claim says method > other (or > threshold); -1: less
    threshold: float = 0.0


CLAIMS = (
    Claim("OPD's update has higher top-1% energy than RL's", "top1pct_energy", "opd", "rl", +1),
    Claim("OPD's update has a higher σ1/‖ΔW‖_F than RL's", "spectral_ratio", "opd", "rl", +1),
    Claim("OPD's update has a lower effective rank than RL's", "effective_rank", "opd", "rl", -1),
    Claim(
        "OPD aligns with its final update earlier than RL (first 30%, singular-vector alignment)",
        "early_alignment", "opd", "rl", +1,
    ),
    Claim(
        "OPD aligns with its final update earlier than RL (first 30%, subspace overlap)",
        "early_overlap", "opd", "rl", +1,
    ),
    Claim("RL puts a larger share of its update in the bottom and top layers than OPD",
          "edge_layer_share", "rl", "opd", +1),
    Claim("MLP updates matter more than attention updates (OPD, window probe)",
          "mlp_minus_attention", "opd", None, +1),
    Claim("Embeddings barely matter (OPD: swapping them back loses < 10% of the gain)",
          "embedding_swap_loss", "opd", None, -1, EMBEDDING_LOSS_MAX),
    Claim("A 10%-progress OPD checkpoint, rescaled, recovers most (>= 60%; paper ~80%) of the gain",
          "rescaled_early_recovery", "opd", None, +1, RESCALED_RECOVERY_MIN),
)  # fmt: skip


def _mean(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def run_measures(analysis_dir: Path) -> dict[str, float | None]:
    """Every measure of MEASURES for one run's analysis folder (None where it cannot be taken)."""
    tables = load_tables(Path(analysis_dir))
    overall = tables["overall"]
    final = overall[-1]
    measures: dict[str, float | None] = {
        key: final.get(f"dynamics/{key}")
        for key in ("top1pct_energy", "spectral_ratio", "effective_rank", "spectral_norm")
    }
    early = [row for row in overall if 0 < row["progress"] <= EARLY_PROGRESS]
    overlap_keys = sorted(
        (k for k in final if k.startswith("dynamics/overlap_top")),
        key=lambda k: int(k.removeprefix("dynamics/overlap_top")),
    )
    measures["early_alignment"] = _mean([row.get("dynamics/alignment") for row in early])
    measures["early_overlap"] = (
        _mean([row.get(overlap_keys[-1]) for row in early]) if overlap_keys else None
    )
    measures["edge_layer_share"] = edge_layer_share(tables["layers"])
    measures["mlp_minus_attention"] = window_difference(tables.get("probe_window", []))
    measures["embedding_swap_loss"] = embedding_swap_loss(tables.get("probe_embedding_swap", []))
    measures["rescaled_early_recovery"] = rescaled_recovery(tables.get("probe_rescaling", []))
    return measures


def edge_layer_share(layers: list[dict]) -> float | None:
    """At the final step: (first and last quarter of layers' squared update) / all layers'."""
    if not layers:
        return None
    final_step = max(row["step"] for row in layers)
    shares = {
        row["layer"]: row["dynamics/allocation"] for row in layers if row["step"] == final_step
    }
    if any(v is None for v in shares.values()) or not sum(shares.values()):
        return None
    n_layers = max(shares) + 1
    edge = max(1, math.ceil(EDGE_LAYER_FRACTION * n_layers))
    edge_layers = {*range(edge), *range(n_layers - edge, n_layers)}
    return sum(v for layer, v in shares.items() if layer in edge_layers) / sum(shares.values())


def window_difference(window: list[dict]) -> float | None:
    """Mean over window centres of gain recovered by the MLP-only minus the attention-only update."""
    by_part = {
        part: {r["centre"]: r["probe/gain_recovered"] for r in window if r["part"] == part}
        for part in ("mlp", "attention")
    }
    diffs = [
        by_part["mlp"][c] - by_part["attention"][c]
        for c in by_part["mlp"]
        if by_part["mlp"][c] is not None and by_part["attention"].get(c) is not None
    ]
    return sum(diffs) / len(diffs) if diffs else None


def embedding_swap_loss(rows: list[dict]) -> float | None:
    row = next((r for r in rows if r["variant"] == "final_base_embedding"), None)
    if row is None or row["probe/gain_recovered"] is None:
        return None
    return 1.0 - row["probe/gain_recovered"]


def rescaled_recovery(rows: list[dict], progress: float = 0.1) -> float | None:
    """Gain recovered by the checkpoint nearest `progress` (below 1), rescaled to the final norm."""
    rescaled = [r for r in rows if r["beta"] == 1.0 and r["progress"] < 1.0]
    if not rescaled:
        return None
    nearest = min(rescaled, key=lambda r: abs(r["progress"] - progress))
    return nearest["probe/gain_recovered"]


def t95(dof: float) -> float:
    index = max(1, math.floor(dof))
    return T95[index - 1] if index <= len(T95) else 1.96


def interval(a: list[float], b: list[float] | None, threshold: float) -> tuple[float, float | None]:
    """(d, half-width of its 95% Welch interval or None when a side has < 2 values)."""
    if b is None:
        d = statistics.fmean(a) - threshold
        if len(a) < 2:
            return d, None
        return d, t95(len(a) - 1) * statistics.stdev(a) / math.sqrt(len(a))
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return d, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return d, t95(dof) * se


def verdict(signed_d: float, half_width: float | None) -> str:
    if half_width is None:
        return "inconclusive"
    if signed_d - half_width > 0:
        return "holds"
    if signed_d + half_width < 0:
        return "does not hold"
    return "inconclusive"


def judge(measures: dict[str, list[dict[str, float | None]]]) -> list[dict]:
    """One row per claim: the numbers (mean, sd, seeds per method), the interval and the verdict.

    measures: method -> one `run_measures` dict per seed.
    """
    rows = []
    for claim in CLAIMS:
        methods = [claim.method] + ([claim.other] if claim.other else [])
        values = {
            m: [v for run in measures.get(m, []) if (v := run.get(claim.measure)) is not None]
            for m in methods
        }
        row = {"claim": claim.text, "measure": claim.measure, "threshold": claim.threshold}
        for m in methods:
            row[m] = summarize(values[m])
        missing = [m for m in methods if not values[m]]
        if missing:
            verdict_text = f"not measured ({missing[0]} has no value)"
            row |= {"d": None, "half_width": None, "verdict": verdict_text}
            rows.append(row)
            continue
        other = values[claim.other] if claim.other else None
        d, half = interval(values[claim.method], other, claim.threshold)
        row |= {"d": d, "half_width": half, "verdict": verdict(claim.direction * d, half)}
        rows.append(row)
    return rows


def summarize(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }
