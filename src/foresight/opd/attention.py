"""Attention of the training and scoring forward passes on a CPU: a compiled kernel for the short
sequences of small models, torch's SDPA otherwise, in float32 (float64 for float64 models).

Two things make the library's SDPA slow for the models foresight trains on a CPU:

- torch's CPU flash kernel is slow in bfloat16: its backward took 28 ms against 3.9 ms in float32
  for the demo's batch (64 rows x 37 tokens, 4 heads), which made a bfloat16 step slower than a
  float32 one. Attention here always runs in float32, autocast or not, and the result is cast back
  to the value's dtype (the projection's: bfloat16 under autocast or for a bfloat16 teacher).
- At tens of tokens its fixed costs dominate (small GEMM calls per block of 32 queries, grouped
  key/value heads repeated into copies). `attention.cpp` does each query row in one vectorized pass
  over its keys, forward and backward (fused.py builds it); torch.profiler puts it at about half
  the flash kernel's time at the demo's shapes (benchmarks/throughput.py, README).

The kernel computes the same function as SDPA with the library's boolean masks (or causal without
one); tests/opd/test_attention.py checks it against a float64 softmax reference, values and
gradients. Anything it does not cover (dropout while training, soft-capping, attention sinks,
position biases, queries shorter than keys, another device) goes to the library's SDPA.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from foresight.opd import fused

NAME = "foresight_cpu_attention"
UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")


class CompiledAttention(torch.autograd.Function):
    """attention.cpp's forward and backward: (B, H, T, d) queries, (B, KV, T, d) keys and values,
    a bool (B, 1 or H, T, T) mask or None for causal; the result is (B, T, H, d)."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scale):
        ctx.ops = fused.layer_ops()  # the backward's too, whatever the switch says by then
        result, lse = ctx.ops.attention_forward(query, key, value, mask, scale)
        ctx.save_for_backward(query, key, value, mask, result, lse)
        ctx.scale = scale
        return result

    @staticmethod
    def backward(ctx, grad_result):
        query, key, value, mask, result, lse = ctx.saved_tensors
        grads = ctx.ops.attention_backward(
            grad_result.contiguous(), query, key, value, mask, result, lse, ctx.scale
        )
        return (*grads, None, None)


def compiled_applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs) -> bool:
    """Whether attention.cpp computes this call: no dropout or extras, queries as long as the keys,
    one head dim for queries, keys and values (not multi-head latent attention), one batch, the
    library's boolean masks or causal."""
    if dropout > 0 or any(kwargs.get(name) is not None for name in UNSUPPORTED):
        return False
    if query.shape[2] != key.shape[2] or (attention_mask is None and not is_causal):
        return False
    if value.shape != key.shape or key.shape[0] != query.shape[0] or key.shape[3] != query.shape[3]:
        return False
    if any(t.stride(-1) != 1 for t in (query, key, value)):
        return False
    if attention_mask is not None and (
        attention_mask.dtype != torch.bool or attention_mask.dim() != 4
    ):
        return False
    return fused.layer_ops() is not None


def cpu_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The library's attention-function interface (same arguments and result as its SDPA one): in
    float32 (float64 for float64 inputs) on a CPU, autocast or not, returned in `value`'s dtype."""
    if query.device.type != "cpu":
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    dtype = value.dtype
    # Not only bfloat16 inputs: Qwen3's float32 q/k norms hand over float32 tensors, which SDPA
    # under autocast would still run in bfloat16.
    work = torch.float64 if query.dtype == torch.float64 else torch.float32
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    with torch.autocast("cpu", enabled=False):
        query, key, value = query.to(work), key.to(work), value.to(work)
        if compiled_applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            mask = (
                None
                if attention_mask is None
                else attention_mask.expand(
                    query.shape[0], -1, query.shape[2], key.shape[2]
                ).contiguous()
            )
            attended = CompiledAttention.apply(query, key, value, mask, scale)
        else:
            attended, _ = sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
            )
    return attended.to(dtype), None


AttentionInterface.register(NAME, cpu_attention)
# The same masks as "sdpa": a name without a mask function gets no padding mask at all.
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def cpu_attention_for(model: PreTrainedModel) -> None:
    """Switch a model on a CPU from the library's SDPA to `cpu_attention`; models that use another
    attention (eager, flash) keep it. Not saved: checkpoints keep the config's."""
    if model.device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
