"""How reports write a metric: its readable name and unit, and its numbers.

The `dynamics/...` keys are made in metrics.py, direction.py, straightness.py, collect.py and
tables.py and defined in docs/metrics.md; `LABELS` gives each (or each family, with its parameter
in `{}`) the name a reader sees, in the same words as the docs. `label(key)` raises KeyError for a
key it does not know, so a new metric cannot reach a report under its raw key
(tests/dynamics/test_labels.py checks every key the analysis writes).

Numbers (`fmt`): 3 significant digits, trailing zeros dropped (Python's `%.3g`), written out in
plain decimals between 1e-4 and 1e4 and as `1.23e-5` outside. A spread (standard deviation, or the
half-width of an interval) gets 2 significant digits: "0.0589 ± 0.00055".
"""

from __future__ import annotations

import math
import re

# key pattern -> (readable name, unit). `{p}` is the key's parameter, re-written by `fmt`.
LABELS: dict[str, tuple[str, str]] = {
    "dynamics/frobenius": ("Update size ‖ΔW‖_F", "weight units"),
    "dynamics/frobenius_rel": ("Relative update size ‖ΔW‖_F / ‖W_base‖_F", "ratio"),
    "dynamics/spectral_norm": ("Spectral norm σ1 of ΔW", "weight units"),
    "dynamics/spectral_ratio": ("Spectral ratio σ1 / ‖ΔW‖_F", "ratio, 0 to 1"),
    "dynamics/effective_rank": ("Effective rank of ΔW", "directions"),
    "dynamics/top1pct_energy": ("Top-1% energy ratio of ΔW", "ratio, 0 to 1"),
    "dynamics/energy_top{p}": ("Share of ‖ΔW‖_F² in the top {p} singular directions", "share"),
    "dynamics/sparsity_abs_{p}": ("Share of update entries with |ΔW| < {p}", "share"),
    "dynamics/sparsity_rel_{p}": ("Share of update entries with |ΔW| < {p} × RMS(W_base)", "share"),
    "dynamics/alignment": (
        "Alignment with the final update (top-20 singular vectors)",
        "mean |cos|",
    ),
    "dynamics/overlap_top{p}": ("Top-{p} subspace overlap with the final update", "0 to 1"),
    "dynamics/update_norm": ("Whole-model update size sqrt(Σ ‖ΔW‖_F²)", "weight units"),
    "dynamics/allocation": ("Share of the squared update", "share"),
    "dynamics/allocation_spearman": (
        "Rank correlation of per-tensor update shares with the final ones",
        "Spearman ρ",
    ),
    "dynamics/allocation_attention": ("Attention tensors' share of the squared update", "share"),
    "dynamics/allocation_mlp": ("MLP tensors' share of the squared update", "share"),
    "dynamics/allocation_embedding": ("Embeddings' share of the squared update", "share"),
    "dynamics/allocation_lm_head": ("Output head's share of the squared update", "share"),
    "dynamics/allocation_norm": ("Norm weights' share of the squared update", "share"),
    "dynamics/allocation_other": ("Other tensors' share of the squared update", "share"),
    "dynamics/segment_cosine": (
        "Cosine between the update segments before and after this checkpoint",
        "cos, −1 to 1",
    ),
    "dynamics/early_direction_share": (
        "Share of ‖ΔW_T‖ along this checkpoint's update direction",
        "cos, −1 to 1",
    ),
    "dynamics/pca_pc1": ("Top direction's trajectory variance on PC1", "share"),
    "dynamics/pca_pc12": ("Top direction's trajectory variance on PC1 and PC2", "share"),
}
# Short names for legends and panel titles, where the full one would not fit.
SHORT = {
    "dynamics/frobenius_rel": "‖ΔW‖_F / ‖W_base‖_F",
    "dynamics/spectral_norm": "spectral norm σ1",
    "dynamics/spectral_ratio": "σ1 / ‖ΔW‖_F",
    "dynamics/effective_rank": "effective rank",
    "dynamics/top1pct_energy": "top-1% energy ratio",
    "dynamics/alignment": "alignment with final (top 20)",
    "dynamics/allocation": "share of squared update",
    "dynamics/allocation_spearman": "Spearman ρ vs final shares",
    "dynamics/allocation_attention": "attention share of update",
    "dynamics/allocation_mlp": "MLP share of update",
    "dynamics/energy_top{p}": "top {p}",
    "dynamics/sparsity_abs_{p}": "|ΔW| < {p}",
    "dynamics/sparsity_rel_{p}": "|ΔW| < {p} × RMS",
    "dynamics/overlap_top{p}": "top-{p} overlap",
    "dynamics/segment_cosine": "cos between consecutive segments",
    "dynamics/early_direction_share": "share of ‖ΔW_T‖ along ΔW_t",
    "dynamics/pca_pc1": "PC1",
    "dynamics/pca_pc12": "PC1 + PC2",
}
# Keys that equal 1 at the final checkpoint by definition: the final update compared with itself.
ONE_AT_FINAL = (
    "dynamics/alignment",
    "dynamics/overlap_top{p}",
    "dynamics/allocation_spearman",
    "dynamics/early_direction_share",
)

# Module kinds (module_names.KINDS) as a reader says them.
KIND_NAMES = {
    "embedding": "embeddings",
    "q": "attention query",
    "k": "attention key",
    "v": "attention value",
    "qkv": "attention q|k|v",
    "o": "attention output",
    "gate": "MLP gate",
    "up": "MLP up",
    "down": "MLP down",
    "norm": "norm weights",
    "lm_head": "output head",
    "other": "other tensors",
}

_PATTERNS = {
    pattern: re.compile(re.escape(pattern).replace(r"\{p\}", r"(?P<p>[^/]+)") + "$")
    for pattern in LABELS
}


def _match(key: str) -> tuple[str, str | None]:
    """(pattern, readable parameter or None) of a key; KeyError if no pattern fits."""
    for pattern, regex in _PATTERNS.items():
        found = regex.match(key)
        if found:
            parameter = found.groupdict().get("p")
            return pattern, None if parameter is None else _parameter(parameter)
    raise KeyError(f"no readable name for metric key {key!r}; add it to dynamics/labels.py")


def _parameter(text: str) -> str:
    try:
        return fmt(float(text))
    except ValueError:
        return text


def label(key: str) -> str:
    """Readable name of a metric key: `dynamics/sparsity_abs_1e-06` -> `Share of ... < 1e-6`."""
    pattern, parameter = _match(key)
    return LABELS[pattern][0].format(p=parameter)


def unit(key: str) -> str:
    return LABELS[_match(key)[0]][1]


def short_label(key: str) -> str:
    """A legend-sized name: the short form where one exists, else the readable name."""
    pattern, parameter = _match(key)
    return SHORT.get(pattern, LABELS[pattern][0]).format(p=parameter)


def one_at_final(key: str) -> bool:
    """True for keys that are 1 at the final checkpoint by definition (compared with itself)."""
    return _match(key)[0] in ONE_AT_FINAL


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number to `digits` significant digits: 0.0589, 58.9, 1230, 1e-6, 5.46e-5; None -> n/a."""
    if value is None:
        return "n/a"
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    rounded = float(f"{value:.{digits}g}")  # rounding first: 0.99996 becomes 1, not 1.000
    exponent = math.floor(math.log10(abs(rounded)))
    if -4 <= exponent < 4:
        decimals = max(0, digits - 1 - exponent)
        return f"{rounded:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{rounded:.0f}"
    mantissa = f"{rounded / 10**exponent:.{digits - 1}f}".rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def fmt_spread(value: float | None, spread: float | None) -> str:
    """'value ± spread': the value to 3 significant digits, the spread to 2; no spread, no '±'."""
    if spread is None:
        return fmt(value)
    return f"{fmt(value)} ± {fmt(spread, 2)}"


def percent(share: float | None) -> str:
    """A share as a percentage to 3 significant digits: 0.2345 -> '23.5%'."""
    return "n/a" if share is None else f"{fmt(100 * share)}%"
