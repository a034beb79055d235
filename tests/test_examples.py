"""The runnable files under examples/ run as written, on the committed tiny models.

Run: .venv/bin/python -m pytest tests/test_examples.py -q
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_trl_effopd_example_searches_at_the_trigger_steps(tmp_path):
    """examples/trl_effopd.py: TRL's DistillationTrainer trains, and the EffOPD callback searches
    after steps 1 and 2 (pow2 schedule), printing each search's outcome."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_effopd.py"), "--steps", "2", "--batch", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    searches = re.findall(
        r"^step (\d+): accepted m = ([\d.]+), signal (\S+) -> (\S+)$",
        result.stdout,
        flags=re.MULTILINE,
    )
    assert [int(step) for step, *_ in searches] == [1, 2]
    for _, multiplier, before, after in searches:
        # The kept score is the best seen: W_t's own, or a higher one that an accepted jump reached.
        assert float(after) >= float(before)
        assert (float(multiplier) == 0) == (float(after) == float(before))
