"""The analysis suite: what training did to the weights, from checkpoints alone (paper Sec. 3-4).

    analyze(base, [(step, folder), ...], out_dir, DynamicsConfig(), scorer=None) -> summary dict
    compare({"opd": report_dir_a, "rl": report_dir_b}, out_dir)
    checkpoints_of(run_dir) -> [(step, folder), ...]

CLI: `foresight analyze BASE CKPT...`, `foresight analyze RUN`,
`foresight analyze --compare RUN...` (foresight.analyze_command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foresight.dynamics.analysis import analyze, compare
    from foresight.dynamics.patch import Scorer
    from foresight.dynamics.reading import checkpoints_of

__all__ = ["Scorer", "analyze", "checkpoints_of", "compare"]

_HOMES = {
    "analyze": "foresight.dynamics.analysis",
    "compare": "foresight.dynamics.analysis",
    "Scorer": "foresight.dynamics.patch",
    "checkpoints_of": "foresight.dynamics.reading",
}


def __getattr__(name: str) -> object:
    """Import the public names on first use (PEP 562).

    The CLI imports foresight.analyze_command at startup, which runs this file first; importing
    torch and matplotlib here would slow down every `foresight` command, not just `analyze`.
    """
    if name not in _HOMES:
        raise AttributeError(f"module 'foresight.dynamics' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
