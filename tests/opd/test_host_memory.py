"""`reuse_freed_memory`: large freed CPU tensors are reused, not faulted in again at every step.

Each check runs in a fresh interpreter: malloc's settings are process-wide and cannot be undone.

Run: .venv/bin/python -m pytest tests/opd/test_host_memory.py -q
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from foresight.opd.host_memory import reuse_freed_memory

# A step's worth of large temporaries (a full-vocabulary loss's shape of work: four 64 MiB float32
# tensors made and freed), twelve times; the page faults of each step are counted. The heap settles
# within the first steps (more threads, more steps): the median of the last eight is compared.
PROBE = """
import json, resource, statistics, sys
import torch
from foresight.opd.host_memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
a = torch.ones(16 * 2**20)  # 64 MiB of float32

def step():
    logp = a - 1.0
    p = logp.exp()
    return float((p * (logp - a)).sum())

faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults_per_step": statistics.median(faults[4:])}))
"""

glibc_linux = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def probe(mode: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**environment, **env},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# Page faults are compared between processes, not with a page count: with transparent huge pages
# (system-wide, or torch's THP_MEM_ALLOC_ENABLE) each fault maps 2 MiB instead of 4 KiB.
@pytest.mark.skipif(not glibc_linux, reason="malloc's thresholds are glibc's; elsewhere a no-op")
def test_large_temporaries_are_reused_instead_of_faulted_in_again():
    default = probe("default")
    reused = probe("reuse")
    assert reused["applied"] is True
    assert default["faults_per_step"] > 0  # every step maps and faults in fresh pages
    assert reused["faults_per_step"] < 0.1 * default["faults_per_step"]


@pytest.mark.skipif(not glibc_linux, reason="malloc's thresholds are glibc's; elsewhere a no-op")
def test_the_users_own_malloc_settings_win():
    default = probe("default")
    for setting in (
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ):
        kept = probe("reuse", **setting)
        assert kept["applied"] is False, setting
        assert kept["faults_per_step"] > 0.5 * default["faults_per_step"], setting
    # Another tunable is not a choice of thresholds: the setting still applies.
    assert probe("reuse", GLIBC_TUNABLES="glibc.pthread.rseq=0")["applied"] is True


def test_not_applied_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert reuse_freed_memory() is False
