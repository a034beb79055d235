"""How straight the weight trajectory is: segment cosines and the early direction's share.

EffOPD jumps along W_t − W_anchor; that can only pay where the trajectory
W_0, W_t1, ..., W_T keeps one heading. Both measures treat the attention and MLP matrices (the
tensors EffOPD extrapolates) as one flat vector per checkpoint, so they describe the whole
model's trajectory as the extrapolation sees it, with every entry weighted alike:

    segment s_j = W_tj − W_t(j−1), with W_t0 − W_t(−1) read as W_t0 − W_0 (the base)
    dynamics/segment_cosine at step tj        = ⟨s_j, s_(j+1)⟩ / (‖s_j‖ ‖s_(j+1)‖)
    dynamics/early_direction_share at step t  = ⟨ΔW_T, ΔW_t⟩ / (‖ΔW_T‖ ‖ΔW_t‖), ΔW_t = W_t − W_0

The second is the length of ΔW_T's projection onto the unit direction of ΔW_t, as a share of
‖ΔW_T‖: 1 at the final checkpoint by definition. Sums over tensors are float64 and every
difference is taken in float64 from the float32 weights, chunk by chunk (see `difference_dots`),
so a small segment between two large, nearly equal weights loses nothing to cancellation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SEGMENT = "dynamics/segment_cosine"
EARLY = "dynamics/early_direction_share"
# Entries per float64 chunk: 1M entries keep each of the chunk's few float64 copies at 8 MB.
CHUNK = 1 << 20


def difference_dots(
    w_base: torch.Tensor,
    w_final: torch.Tensor,
    w_before: torch.Tensor,
    w_last: torch.Tensor,
    w_t: torch.Tensor,
) -> tuple[float, float, float, float]:
    """Four float64 dot products of one tensor at one checkpoint, in one pass over its entries.

    With s = w_t − w_last (this segment), s_prev = w_last − w_before, ΔW_t = w_t − w_base and
    ΔW_T = w_final − w_base, returns (‖s‖², ⟨s_prev, s⟩, ⟨ΔW_T, ΔW_t⟩, ‖ΔW_t‖²). The differences
    are formed after the cast to float64, where a difference of two float32 numbers of like
    magnitude is exact.
    """
    sums = [0.0, 0.0, 0.0, 0.0]
    flat = [t.reshape(-1) for t in (w_base, w_final, w_before, w_last, w_t)]
    for start in range(0, flat[0].numel(), CHUNK):
        base, final, before, last, now = (t[start : start + CHUNK].double() for t in flat)
        segment = now - last  # (chunk,)
        delta = now - base
        sums[0] += float(segment @ segment)
        sums[1] += float((last - before) @ segment)
        sums[2] += float((final - base) @ delta)
        sums[3] += float(delta @ delta)
    return sums[0], sums[1], sums[2], sums[3]


@dataclass
class Straightness:
    """Running float64 sums over tensors, one slot per checkpoint; `rows` turns them into values.

    Fed tensor by tensor: `walk(w_base, w_final)` starts a tensor, then `Walk.step(w_t)` takes its
    copy at each checkpoint in step order. Only the tensor's base, final and two previous copies
    are held, all of them tensors the caller has read anyway.
    """

    checkpoints: int
    segment_sq: list[float] = field(init=False)  # ‖s_j‖²
    segment_dot: list[float] = field(init=False)  # ⟨s_j, s_(j+1)⟩, slot j
    final_dot: list[float] = field(init=False)  # ⟨ΔW_T, ΔW_tj⟩
    delta_sq: list[float] = field(init=False)  # ‖ΔW_tj‖²

    def __post_init__(self) -> None:
        for name in ("segment_sq", "segment_dot", "final_dot", "delta_sq"):
            setattr(self, name, [0.0] * self.checkpoints)

    def walk(self, w_base: torch.Tensor, w_final: torch.Tensor) -> Walk:
        return Walk(self, w_base, w_final)

    def rows(self) -> list[dict[str, float | None]]:
        """Per checkpoint, both keys; None where a formula divides by zero.

        segment_cosine is None at the final checkpoint (no segment after it) and wherever one of
        its two segments is zero; early_direction_share where ΔW_t or ΔW_T is zero.
        """
        last = self.checkpoints - 1
        rows = []
        for j in range(self.checkpoints):
            segment = None
            if j < last:
                segment = _cosine(self.segment_dot[j], self.segment_sq[j], self.segment_sq[j + 1])
            early = _cosine(self.final_dot[j], self.delta_sq[j], self.delta_sq[last])
            rows.append({SEGMENT: segment, EARLY: early})
        return rows


class Walk:
    """One tensor's path through the checkpoints, adding its dot products to the running sums."""

    def __init__(self, sums: Straightness, w_base: torch.Tensor, w_final: torch.Tensor):
        self.sums, self.w_base, self.w_final = sums, w_base, w_final
        # Before the first checkpoint the path stands at the base: s_prev of step 0 is zero.
        self.w_before, self.w_last = w_base, w_base
        self.index = 0

    def step(self, w_t: torch.Tensor) -> None:
        j, sums = self.index, self.sums
        segment_sq, segment_dot, final_dot, delta_sq = difference_dots(
            self.w_base, self.w_final, self.w_before, self.w_last, w_t
        )
        sums.segment_sq[j] += segment_sq
        if j > 0:
            sums.segment_dot[j - 1] += segment_dot  # the joint at checkpoint j − 1
        sums.final_dot[j] += final_dot
        sums.delta_sq[j] += delta_sq
        self.w_before, self.w_last = self.w_last, w_t
        self.index += 1


def _cosine(dot: float, a_sq: float, b_sq: float) -> float | None:
    if a_sq == 0.0 or b_sq == 0.0:
        return None
    # Rounding can push |cos| of parallel vectors a few ulps past 1.
    return max(-1.0, min(1.0, dot / (math.sqrt(a_sq) * math.sqrt(b_sq))))
