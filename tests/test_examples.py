"""The runnable files under examples/ run as written, on the committed tiny models.

Run: .venv/bin/python -m pytest tests/test_examples.py -q
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEARCH_LINE = re.compile(
    r"^step (\d+): accepted m = ([\d.]+), signal (\S+) -> (\S+)$", flags=re.MULTILINE
)


def run_example(name: str, *args: str) -> list[tuple[int, float, float, float]]:
    """Run examples/NAME with ARGS; return each printed search: (step, m, before, after)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        check=False,  # the assert below shows stderr
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    searches = [
        (int(step), float(m), float(before), float(after))
        for step, m, before, after in SEARCH_LINE.findall(result.stdout)
    ]
    for _, multiplier, before, after in searches:
        # The kept score is the best seen: W_t's own, or a higher one that an accepted jump reached.
        assert after >= before
        assert (multiplier == 0) == (after == before)
    return searches


@pytest.mark.slow
def test_trl_distillation_example_searches_and_resumes(tmp_path):
    """examples/trl_effopd.py: TRL's DistillationTrainer trains, the EffOPD callback searches after
    steps 1 and 2 (pow2) and saves its state with the final checkpoint; --resume to step 4 brings
    those searches back and searches after step 4, as an uninterrupted run would."""
    out = str(tmp_path / "distill")
    first = run_example("trl_effopd.py", "--steps", "2", "--batch", "4", "--out", out)
    assert [step for step, *_ in first] == [1, 2]
    assert all(before <= 0 for _, _, before, _ in first)  # minus a KL
    saved = json.loads((tmp_path / "distill" / "checkpoint-2" / "effopd_state.json").read_text())
    assert saved["next_search_step"] == 4
    resumed = run_example("trl_effopd.py", "--steps", "4", "--batch", "4", "--out", out, "--resume")
    assert resumed[:2] == first and [step for step, *_ in resumed] == [1, 2, 4]


@pytest.mark.slow
def test_trl_grpo_example_searches_on_the_reward(tmp_path):
    """examples/trl_grpo_effopd.py: TRL's GRPOTrainer trains on the task's verifier, and the EffOPD
    callback searches after steps 1 and 2 on the mean reward of the validation prompts."""
    out = str(tmp_path / "grpo")
    searches = run_example("trl_grpo_effopd.py", "--steps", "2", "--batch", "8", "--out", out)
    assert [step for step, *_ in searches] == [1, 2]
    # A mean of 0/1 rewards over 32 prompts: a multiple of 1/32 in [0, 1] (printed to 4 places).
    for _, _, before, after in searches:
        for score in (before, after):
            assert 0 <= score <= 1 and abs(score * 32 - round(score * 32)) < 32 * 5e-5
