"""Test helpers of the dynamics tests: planted matrices, a tiny Llama series, a fake scorer.

    .venv/bin/python -m pytest tests/dynamics -q

The series is written by plain `save_pretrained`, sharded into two files, as any HF trainer
would write it: a base model and checkpoints whose 2-D updates are a planted rank-2 direction
that drifts towards its final value, plus a little noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from foresight.config_sections import DynamicsConfig

STEPS = (10, 20, 40)
# Small probe sweeps: every probe runs, with few scorer calls.
PROBE_CFG = DynamicsConfig(
    window=1, scaling_alphas=[0.0, 1.0], truncation_pct=[10.0], rescale_betas=[1.0]
)


def planted_matrix(rng: np.random.Generator, m: int, n: int, sigma: np.ndarray) -> np.ndarray:
    """U diag(sigma) V^T with random orthonormal U (m, r) and V (n, r), r = len(sigma)."""
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return (u * sigma) @ v.T


def tiny_llama(seed: int = 0):
    """A 3-layer Llama small enough to build, save and score in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_series(root: Path, seed: int = 0) -> tuple[Path, list[tuple[int, Path]]]:
    """Base model at root/base and checkpoints at root/run/checkpoints/step-XXXXXX."""
    model = tiny_llama(seed)
    # ~125 KB of float32 weights: an 80 KB shard limit gives exactly two shard files.
    model.save_pretrained(root / "base", max_shard_size="80KB")
    base_state = {name: p.detach().clone() for name, p in model.named_parameters()}
    rng = np.random.default_rng(seed)
    final_updates, drifts = {}, {}
    for name, weight in base_state.items():
        shape = tuple(weight.shape)
        if len(shape) == 2:
            direction = planted_matrix(rng, *shape, np.array([0.08, 0.04]))
            final_updates[name] = direction + 0.0005 * rng.standard_normal(shape)
            drifts[name] = planted_matrix(rng, *shape, np.array([0.03, 0.02]))
        else:
            final_updates[name] = 0.01 * rng.standard_normal(shape)
            drifts[name] = np.zeros(shape)
    checkpoints = []
    for step in STEPS:
        progress = step / STEPS[-1]
        with torch.no_grad():
            for name, param in model.named_parameters():
                update = progress * final_updates[name] + (1 - progress) * drifts[name]
                param.copy_(base_state[name] + torch.from_numpy(update).float())
        folder = root / "run" / "checkpoints" / f"step-{step:06d}"
        model.save_pretrained(folder, max_shard_size="80KB")
        checkpoints.append((step, folder))
    config = {"model": {"student": str(root / "base"), "teacher": None}, "task": {"name": "arith"}}
    (root / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    return root / "base", checkpoints


class DistanceScorer:
    """Fake scorer: accuracy = 1 - ||theta - theta_T|| / ||theta_base - theta_T||.

    It is 0 at the base weights and 1 at the final ones, and a plain function of the weights, so
    the probes' bookkeeping can be checked exactly without any generation.
    """

    def __init__(self, base_dir: Path, final_dir: Path):
        from safetensors.torch import load_file

        self.final = {}
        for file in sorted(final_dir.glob("*.safetensors")):
            self.final.update(load_file(file))
        base = {}
        for file in sorted(base_dir.glob("*.safetensors")):
            base.update(load_file(file))
        self.scale = self._distance(base)
        self.calls = 0

    def _distance(self, weights: dict[str, torch.Tensor]) -> float:
        total = sum(float((weights[name] - self.final[name]).square().sum()) for name in self.final)
        return total**0.5

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        self.calls += 1
        weights = {name: p.detach() for name, p in model.named_parameters()}
        accuracy = 1.0 - self._distance(weights) / self.scale
        return {"accuracy": accuracy, "kl/reverse": 1.0 - accuracy}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def images_of(report_html: Path) -> list[bytes]:
    """The bytes of every image report.html references, from data URIs or relative files."""
    import base64
    import re

    images = []
    for source in re.findall(r'<img[^>]*\ssrc="([^"]+)"', report_html.read_text()):
        if source.startswith("data:image/png;base64,"):
            images.append(base64.b64decode(source.split(",", 1)[1]))
        else:
            images.append((report_html.parent / source).read_bytes())
    return images


def assert_valid_png(data: bytes) -> None:
    """PNG signature, and matplotlib (through Pillow) decodes it to a non-empty image."""
    import io

    import matplotlib.image

    assert data[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
