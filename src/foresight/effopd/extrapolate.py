"""EffOPD's weight arithmetic, with no search logic: which tensors, the anchor, candidates, undo.

Δ = W_t − anchor over the selected tensors; a candidate is W_t + m·Δ. After k accepted searches of
the paper's grid the weights equal anchor + (2k+1)·Δ. Copies are exact, so undo is bit-for-bit.

Under FSDP2 every parameter is a DTensor and every tensor here is this rank's shard of it: anchor
and current weights share the sharding, so the element-wise arithmetic on shards is the arithmetic
on the whole; only the norm needs a sum over ranks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from foresight.module_names import module_of

Weights = dict[str, torch.Tensor]


def extrapolated_names(model: torch.nn.Module, kinds: list[str]) -> list[str]:
    """Names of the 2-D weights whose module kind (q, k, v, o, gate, up, down, ...) is in `kinds`.

    Embeddings, lm_head and norms are left out by the default kinds, as in the paper.
    """
    return [
        name
        for name, param in model.named_parameters()
        if param.ndim == 2 and module_of(name)[1] in kinds
    ]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor parameter (a view: writing to it writes the parameter)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def snapshot(params: dict[str, torch.nn.Parameter], device: str = "cpu") -> Weights:
    """Detached copies of the selected tensors (the anchor lives on CPU by default)."""
    return {name: local(p).detach().to(device, copy=True) for name, p in params.items()}


@torch.no_grad()
def write(params: dict[str, torch.nn.Parameter], weights: Weights) -> None:
    """Copy `weights` into the live parameters in place (optimizer references stay valid)."""
    for name, param in params.items():
        local(param).copy_(weights[name])


@torch.no_grad()
def write_candidate(
    params: dict[str, torch.nn.Parameter], current: Weights, anchor: Weights, multiplier: float
) -> None:
    """Set each selected parameter to W_t + m·(W_t − anchor)."""
    for name, param in params.items():
        w_t = current[name]
        local(param).copy_(w_t + multiplier * (w_t - anchor[name]))


def inner(params: dict[str, torch.nn.Parameter], a: Weights, b: Weights) -> float:
    """Σ over the selected tensors of ⟨a, b⟩, summed in float64 (over ranks under FSDP2)."""
    total = torch.zeros((), dtype=torch.float64)
    for name in a:
        total += (a[name].double() * b[name].double()).sum().cpu()
    if any(isinstance(p, DTensor) for p in params.values()):  # the shards' sums, summed
        summed = total.to(next(iter(params.values())).device)
        dist.all_reduce(summed)
        total = summed.cpu()
    return float(total)


def difference(current: Weights, anchor: Weights) -> Weights:
    """Δ = current − anchor, per tensor."""
    return {name: current[name] - anchor[name] for name in current}


def update_norm(params: dict[str, torch.nn.Parameter], current: Weights, anchor: Weights) -> float:
    """‖Δ‖_F over all selected tensors: how far training moved since the anchor."""
    delta = difference(current, anchor)
    return math.sqrt(inner(params, delta, delta))


def cosine(params: dict[str, torch.nn.Parameter], a: Weights, b: Weights) -> float:
    """cos(a, b) over all selected tensors as one flat vector; 0 when either is zero."""
    norms = math.sqrt(inner(params, a, a) * inner(params, b, b))
    return inner(params, a, b) / norms if norms > 0 else 0.0
