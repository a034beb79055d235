"""Read HF model folders one tensor at a time, and map tensor names to (layer, module kind).

A folder holds `model.safetensors`, or shards listed in `model.safetensors.index.json`. Every read
opens the shard, copies one tensor out and closes it again: a handle kept open would leave every
page it touched resident (memory-mapped), so reading a series of checkpoints would grow the
process by one model per checkpoint. Reading this way keeps the peak near a few copies of the
largest tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open

from foresight.errors import UserError
from foresight.module_names import ATTENTION_KINDS, CONV1D_LEAVES, KINDS, MLP_KINDS, module_of

_STEP_DIR = re.compile(r"step-(\d{6,})")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the base model: where it sits and what it is."""

    name: str
    shape: tuple[int, ...]
    layer: int | None
    kind: str
    transposed: bool  # stored as (in, out): transpose before taking left singular vectors

    @property
    def is_matrix(self) -> bool:
        """A 2-D attention or MLP weight: the matrices the paper's metrics average over."""
        return len(self.shape) == 2 and self.kind in ATTENTION_KINDS | MLP_KINDS


@contextmanager
def _safetensors(file: Path) -> Iterator:
    """safe_open, with a damaged file (truncated, not safetensors) reported as a UserError."""
    try:
        with safe_open(file, framework="pt") as handle:
            yield handle
    except SafetensorError as exc:
        raise UserError(
            f"{file} is not a readable safetensors file ({exc}); re-save it or leave it out."
        ) from None


class ModelFolder:
    """The safetensors weights of one HF model folder, read one tensor at a time by name."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.files = _weight_files(self.path)  # tensor name -> shard file
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(set(self.files.values())):
            with _safetensors(file) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    self.shapes[name] = tuple(handle.get_slice(name).get_shape())
        if missing := sorted(set(self.files) - set(self.shapes)):
            raise UserError(
                f"{self.path}: the shard index lists {missing[:3]} but no shard holds them; "
                "re-save the folder with save_pretrained."
            )

    def read(self, name: str) -> torch.Tensor:
        """A float32 copy of one tensor; the shard is closed again before returning."""
        with _safetensors(self.files[name]) as handle:
            tensor = handle.get_tensor(name).to(torch.float32)
        # A diverged run's NaN would otherwise surface as an SVD convergence error.
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{self.path}: tensor {name} holds NaN or inf values; leave this checkpoint out."
            )
        return tensor


def _weight_files(path: Path) -> dict[str, Path]:
    if not path.is_dir():
        raise UserError(f"Model folder {path} does not exist; pass an HF model folder.")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"{path} has no *.safetensors weights; save it with save_pretrained "
            "(safe_serialization=True) or convert its .bin files to safetensors."
        )
    names: dict[str, Path] = {}
    for file in files:
        with _safetensors(file) as handle:
            names.update(dict.fromkeys(handle.keys(), file))
    return names


def describe(base: ModelFolder, name_pattern: str | None = None) -> list[TensorInfo]:
    """Every tensor of the base, mapped to (layer, kind), ordered embedding, layers, the rest."""
    pattern = re.compile(name_pattern) if name_pattern else None
    infos = []
    for name, shape in base.shapes.items():
        layer, kind = module_of(name, pattern)
        leaf = name.split(".")[-2] if name.count(".") else name
        transposed = len(shape) == 2 and leaf in CONV1D_LEAVES
        infos.append(TensorInfo(name, shape, layer, kind, transposed))
    rank = {kind: i for i, kind in enumerate(KINDS)}
    # Tensors outside any layer sort before layer 0 (embeddings) or after the last (final norm,
    # lm_head), so tables read in the model's forward order.
    late = {"norm", "lm_head", "other"}
    return sorted(
        infos,
        key=lambda t: (
            t.layer if t.layer is not None else (10**9 if t.kind in late else -1),
            rank[t.kind],
            t.name,
        ),
    )


def check_series(base: ModelFolder, checkpoints: list[ModelFolder]) -> None:
    """UserError naming the tensors a checkpoint lacks, adds or reshapes relative to the base."""
    for folder in checkpoints:
        missing = sorted(set(base.shapes) - set(folder.shapes))
        if missing:
            raise UserError(
                f"Checkpoint {folder.path} lacks {len(missing)} tensor(s) of the base, e.g. "
                f"{', '.join(missing[:3])}; pass checkpoints of the same architecture as the base."
            )
        extra = sorted(set(folder.shapes) - set(base.shapes))
        if extra:
            raise UserError(
                f"Checkpoint {folder.path} has {len(extra)} tensor(s) the base lacks, e.g. "
                f"{', '.join(extra[:3])}; pass the base model these checkpoints were trained from."
            )
        reshaped = [n for n, shape in base.shapes.items() if folder.shapes[n] != shape]
        if reshaped:
            first = reshaped[0]
            raise UserError(
                f"Checkpoint {folder.path} changes the shape of {len(reshaped)} tensor(s), e.g. "
                f"{first} {list(folder.shapes[first])} vs base {list(base.shapes[first])}; pass "
                "the base model these checkpoints were trained from."
            )


def checkpoints_of(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every RUN/checkpoints/step-XXXXXX, in step order.

    Names must match exactly, so partial writes such as `step-000010.tmp-123` are skipped.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        raise UserError(
            f"{run_dir} has no checkpoints/ folder; pass a run folder written by train."
        )
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _STEP_DIR.fullmatch(path.name))
    ]
    if not found:
        raise UserError(f"{folder} holds no step-XXXXXX checkpoints; train with checkpoints first.")
    return sorted(found)


def step_of(folder: Path) -> int:
    """The training step of a checkpoint folder: from its trainer_state.json (Hugging Face and TRL
    trainers) or foresight.json when present, else the digits its name ends in (`checkpoint-120`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"No such checkpoint folder: {folder}; check the path.")
    for name, key in (("trainer_state.json", "global_step"), ("foresight.json", "step")):
        if (folder / name).is_file():
            try:
                return int(json.loads((folder / name).read_text())[key])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # an unreadable state file: fall back to the name
    match = re.search(r"(\d+)$", folder.name)
    if match is None:
        raise UserError(
            f"Cannot tell the step of checkpoint folder {folder} (no trainer_state.json, no digits "
            "at the end of its name); pass the steps in order with --steps, e.g. --steps 100,200."
        )
    return int(match.group(1))


def run_config(run_dir: Path) -> dict:
    """The resolved config a training run saved as RUN/config.yaml, as a plain mapping."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass the base model folder with --base.")
    return yaml.safe_load(path.read_text()) or {}
