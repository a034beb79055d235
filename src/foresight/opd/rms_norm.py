"""RMSNorm of Qwen2/Qwen3/Llama models on a CPU: the library's norm computed by rms_norm.cpp in one
pass per row, forward and backward.

The library's norm is eight PyTorch operations forward and about twice as many backward, each a
separate pass over memory; at the widths of the models foresight trains on a CPU (hidden sizes
128-576, Qwen3's per-head norms 32-64 wide) the backward's share was the larger cost. The kernel
keeps the library's rounding points (float32 statistics, the normalized values rounded to the
input's dtype, the weight's product in the promoted dtype), so results agree to the order of
additions inside a row; tests/opd/test_rms_norm.py compares values and gradients. The trainer
routes the student's norms through it (forward + backward of a norm: about half the library's
time in a microbenchmark); a frozen teacher's forward-only norms measured no faster and keep the
library's. Other devices, other norms and a missing build keep the library's forward.
"""

from __future__ import annotations

import types

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from foresight.opd import fused

NORMS = ("Qwen2RMSNorm", "Qwen3RMSNorm", "LlamaRMSNorm")  # the same forward, checked by the tests
DTYPES = {
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.bfloat16),
    (torch.float64, torch.float64),
}


class CompiledRMSNorm(torch.autograd.Function):
    """rms_norm.cpp: hidden (..., n), weight (n) -> the norm in promote(hidden, weight)'s dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, eps):
        ctx.ops = fused.layer_ops()  # the backward's too, whatever the switch says by then
        result, rstd = ctx.ops.rms_norm(hidden, weight, eps)
        ctx.save_for_backward(hidden, weight, rstd)
        ctx.eps = eps
        return result

    @staticmethod
    def backward(ctx, grad_result):
        hidden, weight, rstd = ctx.saved_tensors
        grad_hidden, grad_weight = ctx.ops.rms_norm_backward(
            grad_result.contiguous(), hidden, weight, rstd, ctx.eps
        )
        return grad_hidden, grad_weight, None


def compiled_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """The norm module's forward through rms_norm.cpp where it applies, the library's otherwise."""
    weight = self.weight
    if (
        hidden_states.device.type != "cpu"
        or (hidden_states.dtype, weight.dtype) not in DTYPES
        or isinstance(weight, DTensor)  # sharded (tensor parallelism): the library's forward
        or fused.layer_ops() is None
    ):
        return type(self).forward(self, hidden_states)
    return CompiledRMSNorm.apply(hidden_states.contiguous(), weight, self.variance_epsilon)


def cpu_norms_for(model: PreTrainedModel) -> None:
    """Route the RMSNorm modules of a model on a CPU through `compiled_forward` (the instances'
    forward; the class and the saved checkpoints are untouched)."""
    if model.device.type != "cpu":
        return
    for module in model.modules():
        if type(module).__name__ in NORMS:
            module.forward = types.MethodType(compiled_forward, module)
