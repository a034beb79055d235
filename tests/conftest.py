"""Shared fixtures. Run the suite: .venv/bin/python -m pytest -q"""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import save_micro_model


@pytest.fixture(scope="session")
def micro_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(student folder, teacher folder): different seeds, so the KL between them is clearly non-zero."""
    root = tmp_path_factory.mktemp("models")
    return save_micro_model(root / "student", 0), save_micro_model(
        root / "teacher", 1, sharpen=30.0
    )
