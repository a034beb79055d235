"""The compiled CPU ops, built at first use, cached per machine: the one-token decode step
(decode_step.cpp), and the attention and RMSNorm of the training and scoring passes
(attention.cpp, rms_norm.cpp).

`decode_step()` returns the op, or None where it cannot be built (no C++ compiler) or is switched
off (FORESIGHT_FUSED_DECODE=0 in the environment); the lean decoder then runs its Python step, which
computes the same function (tests/opd/test_decode_step.py compares the two). `layer_ops()` does the
same for the training passes' attention and RMSNorm (attention.cpp, rms_norm.cpp;
FORESIGHT_FUSED_LAYERS=0), which then run as the library's PyTorch operations.
Each build takes ~15-30 s on a 2-core machine, once: torch.utils.cpp_extension keeps it in
~/.cache/torch_extensions (or $TORCH_EXTENSIONS_DIR) and rebuilds only when the source or the flags
change.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode_step.cpp")
LAYER_SOURCES = [Path(__file__).with_name(name) for name in ("attention.cpp", "rms_norm.cpp")]
COLUMN_BLOCK = 32  # decode_step.cpp's kColumnBlock: the key cache's capacity is a multiple of it
# -ffp-contract=off: the compiler fuses no multiply-adds of its own, so products and sums round as
# PyTorch's separate operations do (attention.cpp's explicit at::vec::fmadd stay fused).
# -fopenmp: at::parallel_for in the kernels runs on torch's OpenMP threads (without it, the
# header's serial fallback runs every chunk on the calling thread).
FLAGS = ["-O3", "-fopenmp-simd", "-ffp-contract=off", "-fopenmp"]
# The instruction sets of each of torch's own CPU kernel builds, so that at::vec (the attention's
# exp) has the width torch dispatches to on this machine, and a build cached on a shared disk runs
# on every machine of the same capability (unlike -march=native).
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


def capability() -> str:
    """torch's CPU kernel level here: AVX512, AVX2, or DEFAULT (anything else builds plain)."""
    level = torch.backends.cpu.get_cpu_capability()
    return level if level in CAPABILITY_FLAGS else "DEFAULT"


def capability_flags(level: str) -> list[str]:
    if level == "DEFAULT":
        return []
    return CAPABILITY_FLAGS[level] + [f"-DCPU_CAPABILITY={level}", f"-DCPU_CAPABILITY_{level}"]


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the one this project installs (the `ninja` package)
    sits beside the interpreter, which is not on PATH when .venv is not activated."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build(sources: list[Path], prefix: str, flags: list[str], what: str):
    """Build `sources` into one extension (cached) and return its op namespace, or None with a
    warning when the build fails."""
    from torch.utils import cpp_extension

    try:
        _ninja_on_path()
        level = capability()
        # The ops' namespace carries a hash of the sources and flags: another version of them
        # (another tree's, benchmarks/sample_score.py --against) loads beside it, not over it.
        digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources))
        digest.update(" ".join(flags).encode())
        namespace = prefix + digest.hexdigest()[:12]
        cpp_extension.load(
            name=f"{namespace}_{level.lower()}",
            sources=[str(source) for source in sources],
            extra_cflags=flags
            + capability_flags(level)
            + [f"-D{prefix.upper()}NAMESPACE={namespace}"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        warnings.warn(
            f"the compiled {what} could not be built ({reason}); the slower PyTorch path runs "
            "instead. Install a C++ compiler (g++) to get it back.",
            stacklevel=3,
        )
        return None
    return getattr(torch.ops, namespace)


@functools.cache
def decode_step():
    """The op (torch.ops.foresight_decode_<hash>.decode_step), or None when switched off
    (FORESIGHT_FUSED_DECODE=0) or impossible to build."""
    if os.environ.get("FORESIGHT_FUSED_DECODE", "1") == "0":
        return None
    ops = _build([SOURCE], "foresight_decode_", FLAGS, "decode step")
    return None if ops is None else ops.decode_step


def layer_ops():
    """The namespace of the training passes' ops: attention.cpp's attention_forward and
    attention_backward, rms_norm.cpp's rms_norm and rms_norm_backward; None when switched off
    (FORESIGHT_FUSED_LAYERS=0, read at every call: benchmarks/throughput.py --versus-pytorch
    switches it between steps) or impossible to build."""
    if os.environ.get("FORESIGHT_FUSED_LAYERS", "1") == "0":
        return None
    return _built_layer_ops()


@functools.cache
def _built_layer_ops():
    return _build(LAYER_SOURCES, "foresight_layers_", FLAGS, "layer ops")
