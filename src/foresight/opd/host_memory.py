"""Large host buffers kept for reuse between training steps instead of handed back to the kernel.

A step on a CPU allocates and frees the same large tensors every time: at SmolLM2's 49k-token
vocabulary, each float32 temporary of the full-vocabulary loss over 8 rows x 32 positions is 48 MiB.
glibc's malloc serves a block above its mmap threshold (adapted at run time, at most 32 MiB) with a
fresh `mmap` and unmaps it on `free`, so each such tensor is faulted in again, page by page, at
every step. Raising malloc's mmap and trim thresholds keeps freed blocks in the heap, where the
next step reuses them. SmolLM2 + LoRA in bfloat16 (`benchmarks/throughput.py`, two alternating
pairs): 403k and 335k page faults per step before, 3 and 15k after; the step 7.28 and 6.84 CPU
seconds before, 6.28 and 6.56 after; peak RSS 2.56 and 2.66 GiB before, 3.09 and 2.82 GiB after.

The cost is resident memory: freed blocks stay mapped, up to `THRESHOLD` of free space at the top
of the heap, and holes below it until reused, in every process that trains (each rank of a run on
CPUs). The settings are the C library's own tunables, applied only on Linux with glibc, and not at
all when the user has set malloc's thresholds (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
or the same tunables in `GLIBC_TUNABLES`): those choose for the whole process, this module never
overrides them. Older glibc caps the mmap threshold at 32 MiB (half its heap size); there the cap
is used, which still covers the tensors below it.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of free top is kept
OLD_GLIBC_CAP = 32 << 20  # older glibc refuses an mmap threshold above half its 64 MiB heap size
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def user_chose() -> bool:
    """Whether the environment already sets malloc's mmap or trim threshold."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(os.environ.get(name) for name in USER_SETTINGS) or any(
        name in tunables for name in USER_TUNABLES
    )


def reuse_freed_memory() -> bool:
    """Keep large freed blocks for reuse (see the module docstring); whether malloc's mmap
    threshold was raised."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose():
        return False
    libc = ctypes.CDLL(None)  # the process's own C library
    libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) or libc.mallopt(M_MMAP_THRESHOLD, OLD_GLIBC_CAP)
    )
