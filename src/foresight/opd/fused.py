"""The compiled one-token decode step (decode_step.cpp), built at first use and cached per machine.

`decode_step()` returns the op, or None where it cannot be built (no C++ compiler) or is switched off
(FORESIGHT_FUSED_DECODE=0 in the environment); the lean decoder then runs its Python step, which
computes the same function (tests/opd/test_decode_step.py compares the two). The build takes ~15-30 s
on a 2-core machine, once: torch.utils.cpp_extension keeps it in ~/.cache/torch_extensions (or
$TORCH_EXTENSIONS_DIR) and rebuilds only when the source or the flags change.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode_step.cpp")
COLUMN_BLOCK = 32  # decode_step.cpp's kColumnBlock: the key cache's capacity is a multiple of it
# -ffp-contract=off: no fused multiply-adds, so products and sums round as PyTorch's separate
# operations do.
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=off"]


def capability_flags() -> list[str]:
    """ATen's vector width for at::vec (exp in the attention), as torch itself dispatches here."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX512", "AVX2"):
        return [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    return []


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the one this project installs (the `ninja` package)
    sits beside the interpreter, which is not on PATH when .venv is not activated."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def decode_step():
    """torch.ops.foresight_decode.decode_step, or None when it is switched off or cannot be built."""
    if os.environ.get("FORESIGHT_FUSED_DECODE", "1") == "0":
        return None
    from torch.utils import cpp_extension

    try:
        _ninja_on_path()
        cpp_extension.load(
            name="foresight_decode",
            sources=[str(SOURCE)],
            extra_cflags=FLAGS + capability_flags(),
            is_python_module=False,
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
        warnings.warn(
            f"the compiled decode step could not be built ({str(error).splitlines()[0]}); "
            "sampling runs the slower Python step. Install a C++ compiler (g++) to get it back.",
            stacklevel=2,
        )
        return None
    return torch.ops.foresight_decode.decode_step
