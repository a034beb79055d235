"""Attention for a student trained under bfloat16 autocast on a CPU: the same SDPA, in float32.

With `model.dtype: bfloat16` the student's projections run in bfloat16 (about 2.2x the float32
matmul rate on an AVX-512-BF16 CPU, benchmarks/throughput.py measures it), but torch's CPU flash
attention kernel is slow in bfloat16: its backward took 28 ms against 3.9 ms in float32 for the
demo's batch (64 rows x 37 tokens, 4 heads), which made the whole bfloat16 step slower than the
float32 one. This attention function upcasts query, key and value, runs the library's own SDPA
attention with autocast off, and casts the result back: more precise than bfloat16 attention and
several times faster on a CPU. On other devices it is the library's SDPA unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "foresight_cpu_float32_sdpa"


def float32_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA attention (same arguments and result as the library's); in float32 on a CPU, autocast
    or not, returned in the dtype of `value` (the projection's, bfloat16 under autocast)."""
    if query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # Not only bfloat16 inputs: Qwen3's float32 q/k norms hand over float32 tensors, which SDPA
    # under autocast would still run in bfloat16.
    dtype = value.dtype
    with torch.autocast("cpu", enabled=False):
        attended, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return attended.to(dtype), weights


AttentionInterface.register(NAME, float32_sdpa)
# The same masks as "sdpa": a name without a mask function gets no padding mask at all.
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def float32_attention_on_cpu(model: PreTrainedModel) -> None:
    """Switch a student that trains under bfloat16 autocast on a CPU to `float32_sdpa`; models
    that use another attention (eager, flash) keep it. Not saved: checkpoints keep the config's."""
    if model.device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
