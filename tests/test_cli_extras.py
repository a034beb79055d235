"""A command that needs `foresight[train]`, run without it, names the extra instead of a traceback.

    .venv/bin/python -m pytest -q tests/test_cli_extras.py

The training packages are hidden with `sys.modules[name] = None`, which makes their import raise
ModuleNotFoundError as in an install without them. `make check-analysis-install` checks the same
in a real venv without the extras (.ci/check_analysis_install.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
sys.modules[sys.argv[1]] = None  # as if `pip install foresight` left it out
from foresight.cli import main
sys.argv = ["foresight", *sys.argv[2:]]
main()
"""


def run_without(module: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", SCRIPT, module, *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow  # each run imports torch and transformers before it reaches the extra
@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("peft", ["train", "configs/tiny.yaml", "--set", "train.out_dir=runs/never-written"]),
        ("gguf", ["import-gguf", "GGUF_FILE", "OUT"]),
    ],
)
def test_missing_training_extra_exits_2_naming_it(module, args, tmp_path):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes(28))  # passes the magic-bytes check, then needs gguf
    args = [{"GGUF_FILE": str(gguf_file), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    result = run_without(module, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: foresight {args[0]} needs the training extras ({module} is not installed): "
        "pip install 'foresight[train]'"
    )
    assert not (REPO / "runs" / "never-written").exists()


def test_another_missing_module_is_still_a_traceback():
    # Only the train extra's modules get the install hint; anything else is our bug.
    result = run_without("foresight.train.loop", "train", "configs/tiny.yaml")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "foresight[train]" not in result.stderr
