"""What a run did to its weights, in one paragraph of plain words, from the report's tables alone.

Every number in the paragraph is read from overall.csv, kinds.csv and layers.csv; the only
constants are the thresholds below and how many kinds and layers to name.

    where the update went    the module kinds and layers with the largest share of ‖ΔW‖_F²
    how concentrated         the share of ‖ΔW‖_F² in the top-k singular directions (mean matrix)
    how early                the first checkpoint whose alignment with the final update (and
                             whose update shares' rank correlation with the final ones) is >= 0.9
    how straight             the median cosine between consecutive update segments and the
                             sharpest turn, against the EffOPD regime map's threshold; the share
                             of the final update's length along the first checkpoint's direction
"""

from __future__ import annotations

import itertools
import math
import statistics

from foresight.dynamics.labels import fmt, kind_name, percent

Row = dict[str, object]

SETTLED = 0.9  # alignment (or Spearman) with the final checkpoint at which we call it "fixed"
TOP_KINDS = 3
TOP_LAYERS = 2
# The trajectory's straightness (straightness.py).
SEGMENT = "dynamics/segment_cosine"
EARLY = "dynamics/early_direction_share"
# The EffOPD regime map (docs/effopd.md, benchmarks/effopd_straightness.py), by plain OPD's median
# segment cosine (checkpoints 10 steps apart): at or above STRAIGHT_REGIME (0.71 to 0.90, the low
# learning rates) EffOPD raised accuracy at the same lr in every cell; below CURVED_REGIME (0.31 to
# 0.41, the tuned ones) it never paid; in between (0.59 to 0.65) it was mixed.
STRAIGHT_REGIME = 0.7
CURVED_REGIME = 0.5
MAP_SPACING = 10  # steps between the map's checkpoints


def findings(tables: dict[str, list[Row]]) -> str:
    """The paragraph, as plain text; empty for a report without checkpoints."""
    overall = tables["overall"]
    if not overall:
        return ""
    final = overall[-1]
    parts = [
        _size(overall),
        _kinds(_at_step(tables["kinds"], final["step"]), final),
        _layers(_at_step(tables["layers"], final["step"])),
        _concentration(final),
        _direction(overall),
        _straightness(overall),
    ]
    return " ".join(part for part in parts if part)


def _at_step(rows: list[Row], step: object) -> list[Row]:
    return [row for row in rows if row["step"] == step]


def _size(overall: list[Row]) -> str:
    final = overall[-1]
    where = f"{len(overall)} checkpoints up to step {final['step']}"
    if len(overall) == 1:
        where = f"one checkpoint, step {final['step']}"
    relative = final.get("dynamics/frobenius_rel")
    if relative is None:
        return f"This report measures {where} against the base model."
    return (
        f"This report measures {where} against the base model: by the final checkpoint an "
        f"attention or MLP matrix had moved by {percent(relative)} of its own size on average "
        f"(‖ΔW‖_F / ‖W_base‖_F)."
    )


def _kinds(kinds: list[Row], final: Row) -> str:
    ranked = sorted(
        (row for row in kinds if row.get("dynamics/allocation")),
        key=lambda row: -float(row["dynamics/allocation"]),
    )
    if not ranked:
        return "No tensor changed at the final checkpoint, so the update has no allocation."
    named = [
        f"{kind_name(str(row['kind']))} ({percent(row['dynamics/allocation'])})"
        for row in ranked[:TOP_KINDS]
    ]
    pooled = [
        f"{name} {percent(final.get(f'dynamics/allocation_{family}'))}"
        for family, name in (("mlp", "MLP tensors"), ("attention", "attention tensors"))
        if final.get(f"dynamics/allocation_{family}") is not None
    ]
    sentence = f"The largest shares of the squared update went to {_series(named)}"
    return sentence + (f"; in all, {' and '.join(pooled)}." if pooled else ".")


def _layers(layers: list[Row]) -> str:
    ranked = sorted(
        (row for row in layers if row.get("dynamics/allocation")),
        key=lambda row: -float(row["dynamics/allocation"]),
    )
    if len(ranked) < 2:
        return ""
    named = [f"layer {row['layer']} ({percent(row['dynamics/allocation'])})" for row in ranked]
    even = sum(float(row["dynamics/allocation"]) for row in ranked) / len(ranked)
    return (
        f"Of the {len(ranked)} layers, {_series(named[:TOP_LAYERS])} took the most and "
        f"{named[-1]} the least (an even split would give each {percent(even)})."
    )


def _concentration(final: Row) -> str:
    energy = sorted(
        (int(key.removeprefix("dynamics/energy_top")), float(value))
        for key, value in final.items()
        if key.startswith("dynamics/energy_top") and value is not None
    )
    if not energy:
        return ""
    counts = _series([str(k) for k, _ in energy])
    shares = _series([percent(share) for _, share in energy])
    extras = [
        f"{name} {fmt(final[key])}"
        for key, name in (
            ("dynamics/top1pct_energy", "top-1% energy ratio"),
            ("dynamics/effective_rank", "effective rank"),
        )
        if final.get(key) is not None
    ]
    return (
        f"In the mean attention or MLP matrix, the top {counts} singular directions of the final "
        f"update hold {shares} of its squared size"
        + (f" ({', '.join(extras)})." if extras else ".")
    )


# key -> (what settles, the measure in words)
_SETTLING = {
    "dynamics/alignment": (
        "The update's direction",
        "alignment with the final update (top-20 singular vectors)",
    ),
    "dynamics/allocation_spearman": (
        "Where the update goes",
        "rank correlation of per-tensor update shares with the final ones (Spearman)",
    ),
}


def _direction(overall: list[Row]) -> str:
    earlier = overall[:-1]
    if not earlier:
        return "With a single checkpoint there is no earlier update to compare with the final one."
    sentences = []
    for key, (what, measure) in _SETTLING.items():
        measured = [row for row in earlier if row.get(key) is not None]
        if not measured:
            continue
        first = next((row for row in measured if float(row[key]) >= SETTLED), None)
        if first is not None:
            sentences.append(
                f"{what} settled by step {first['step']}, {percent(first['progress'])} of the way "
                f"through training: the first checkpoint whose {measure} reaches {fmt(SETTLED)} "
                f"(it is {fmt(first[key])})."
            )
        else:
            best = max(measured, key=lambda row: float(row[key]))
            sentences.append(
                f"{what} had not settled before the final checkpoint: no earlier checkpoint's "
                f"{measure} reaches {fmt(SETTLED)} (the highest is {fmt(best[key])}, at step "
                f"{best['step']})."
            )
    return " ".join(sentences)


def _straightness(overall: list[Row]) -> str:
    """The trajectory's turns between checkpoints, and the first update direction's share."""
    sentences = []
    joints = [row for row in overall if row.get(SEGMENT) is not None]
    if len(joints) == 1:
        cosine = float(joints[0][SEGMENT])
        sentences.append(
            f"The two update segments meet at step {joints[0]['step']} with cosine "
            f"{fmt(cosine)} (an angle of {_degrees(cosine)}; 1 would be a straight line)."
        )
    elif joints:
        middle = statistics.median(float(row[SEGMENT]) for row in joints)
        sharpest = min(joints, key=lambda row: float(row[SEGMENT]))
        sentences.append(
            f"Consecutive update segments meet at a median cosine of {fmt(middle)} (an angle of "
            f"{_degrees(middle)}; 1 would be a straight line) over {len(joints)} checkpoints, the "
            f"sharpest turn at step {sharpest['step']} (cosine {fmt(sharpest[SEGMENT])})."
        )
        sentences.append(_regime(middle, overall))
    earlier = [row for row in overall[:-1] if row.get(EARLY) is not None]
    if earlier:
        first = earlier[0]
        share = float(first[EARLY])
        where = f"step {first['step']} ({percent(first['progress'])} of the way through training)"
        verb = "explains" if share >= 0 else "points against the final update and explains"
        sentences.append(
            f"The update's direction at {where} {verb} {percent(share)} of the final update's "
            f"length (cosine {fmt(share)}: the final update's projection onto it; the part "
            f"perpendicular to it is {percent(math.sqrt(max(0.0, 1 - share * share)))})."
        )
    return " ".join(sentences)


def _regime(middle: float, overall: list[Row]) -> str:
    """Whether the run is as straight as the map's runs where EffOPD had room, in plain words."""
    steps = [0, *(int(row["step"]) for row in overall)]  # the base, then each checkpoint
    spacing = statistics.median(b - a for a, b in itertools.pairwise(steps))
    if middle >= STRAIGHT_REGIME:
        verdict = (
            f"That is as straight as plain OPD was at low learning rates on foresight's EffOPD "
            f"regime map (median at least {fmt(STRAIGHT_REGIME)}), where some extrapolation rule "
            "raised final accuracy at the same learning rate in every case, though a higher "
            "learning rate raised it more."
        )
    elif middle >= CURVED_REGIME:
        verdict = (
            f"That is between the straight and the curved runs of foresight's EffOPD regime map "
            f"(median {fmt(CURVED_REGIME)} to {fmt(STRAIGHT_REGIME)}), where extrapolation was "
            "mixed: at most 1.12x fewer steps, with final accuracy sometimes higher, sometimes "
            "lower."
        )
    else:
        verdict = (
            f"That is as curved as plain OPD was at tuned learning rates on foresight's EffOPD "
            f"regime map (median under {fmt(CURVED_REGIME)}), where no extrapolation rule reached "
            "a target in fewer steps than plain OPD (median over seeds): EffOPD is unlikely to "
            "save steps on this run."
        )
    if spacing != MAP_SPACING:
        verdict += (
            f" (The map's checkpoints were {MAP_SPACING} steps apart, this run's {fmt(spacing)}: "
            "the comparison is rougher.)"
        )
    return verdict


def _degrees(cosine: float) -> str:
    return f"{fmt(math.degrees(math.acos(max(-1.0, min(1.0, cosine)))))}°"


def _series(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
