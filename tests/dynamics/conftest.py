"""Fixtures of the dynamics tests (helpers live in series.py).

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .series import PROBE_CFG, DistanceScorer, write_series


@pytest.fixture(scope="session")
def llama_series(tmp_path_factory) -> tuple[Path, list[tuple[int, Path]]]:
    """Base folder and (step, folder) checkpoints of a tiny Llama run (see series.py)."""
    return write_series(tmp_path_factory.mktemp("series"))


@pytest.fixture(scope="session")
def report(llama_series, tmp_path_factory) -> tuple[Path, dict]:
    """A report folder written by analyze on the series, probes included, and its summary."""
    from foresight.dynamics import analyze

    base, checkpoints = llama_series
    out = tmp_path_factory.mktemp("report")
    scorer = DistanceScorer(base, checkpoints[-1][1])
    return out, analyze(base, checkpoints, out, PROBE_CFG, scorer)


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Run this package's tests on one torch thread, then restore the setting.

    Every matrix here is tiny, where threads cost more than they save; and on a busy 2-core
    machine MKL's OpenMP threads spin against other processes, making a 100x32 SVD take 0.1 s
    instead of 0.1 ms.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
