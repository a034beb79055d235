"""The analysis-only install: `pip install foresight` (no extras) runs `foresight analyze`.

`make check-analysis-install` (run by `make test`) fills .venv-analysis with
`pip install -c constraints.txt .`, non-editable and without extras, then runs:

    .venv-analysis/bin/python .ci/check_analysis_install.py

It fails unless, in that venv: the training-only packages do not import; `foresight analyze`
writes its report on a checkpoint series of the committed arith model, a functional probe included
(it loads and scores the model through transformers); and `foresight train` ends with exit code 2
and one line naming the extras to install, not a traceback.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARITH_BASE = REPO / "models" / "arith" / "base"  # committed, 0.8M parameters, with its tokenizer

# What foresight[train] and foresight[test] add; none may come with the core install.
TRAINING_ONLY = ("trl", "peft", "datasets", "gguf", "math_verify", "accelerate", "tensorboard")
FORESIGHT = Path(sys.executable).parent / "foresight"  # the installed console script


def run(*args: object, expect: int = 0) -> subprocess.CompletedProcess:
    command = [str(FORESIGHT), *map(str, args)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)
    if result.returncode != expect:
        sys.exit(
            f"foresight {' '.join(map(str, args))}: exit {result.returncode}, "
            f"expected {expect}\n{result.stdout}\n{result.stderr}"
        )
    return result


def check_absent() -> None:
    """The training-only packages are not installed, and foresight is not the repo's src/."""
    for name in TRAINING_ONLY:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        sys.exit(f"{name} imports in the analysis-only venv; the core install must not pull it.")
    import foresight

    if Path(foresight.__file__).resolve().is_relative_to(REPO / "src"):
        sys.exit(f"foresight imports from {foresight.__file__}; install it with `pip install .`.")


def arith_series(root: Path) -> list[Path]:
    """Two checkpoints of the committed arith base: its weights plus 0.5x and 1x a fixed update."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(ARITH_BASE / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    update = {
        name: 0.05 * weight.std() * torch.randn(weight.shape, generator=generator)
        for name, weight in weights.items()
        if weight.ndim == 2
    }
    folders = []
    for step, scale in ((10, 0.5), (20, 1.0)):
        folder = root / f"step-{step}"
        shutil.copytree(ARITH_BASE, folder)
        moved = {name: w + scale * update.get(name, 0.0) for name, w in weights.items()}
        save_file(moved, folder / "model.safetensors", metadata={"format": "pt"})
        folders.append(folder)
    return folders


def check_analyze(root: Path) -> None:
    """The metrics, tables, figures and report, and a probe scoring the arith task's prompts."""
    settings = ["dynamics.probes=[scaling]", "dynamics.n_prompts=8", "dynamics.alignment_k=5"]
    settings.append("dynamics.scaling_alphas=[0.0,1.0]")
    out = root / "report"
    result = run(
        "analyze",
        ARITH_BASE,
        *arith_series(root),
        "--probes",
        "--task",
        "arith",
        "--out",
        out,
        *(arg for setting in settings for arg in ("--set", setting)),
    )
    for name in ("report.html", "modules.csv", "overall.csv", "probes/scaling.csv"):
        if not (out / name).is_file():
            sys.exit(f"foresight analyze wrote no {name}:\n{result.stdout}\n{result.stderr}")


def check_training_refused(root: Path) -> None:
    config = REPO / "configs" / "tiny.yaml"
    result = run("train", config, "--set", f"train.out_dir={root / 'train'}", expect=2)
    if "pip install 'foresight[train]'" not in result.stderr or "Traceback" in result.stderr:
        sys.exit(f"foresight train without the extras did not name them:\n{result.stderr}")


def main() -> None:
    started = time.perf_counter()
    check_absent()
    with tempfile.TemporaryDirectory(prefix="foresight-analysis-") as tmp:
        check_analyze(Path(tmp))
        check_training_refused(Path(tmp))
    print(
        f"analysis-only install: {', '.join(TRAINING_ONLY)} absent; analyze wrote its report; "
        f"train asks for the extras ({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
