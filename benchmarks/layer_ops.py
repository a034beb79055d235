"""The compiled attention and RMSNorm (opd/attention.cpp, opd/rms_norm.cpp) against the library's
PyTorch operations, alone, at the shapes of the training step of each benchmark size.

Per shape, alternating in one process (the first side alternates too), CPU time, medians over
--reps after --warmup: forward alone and forward + backward of
  attention  the library's SDPA (float32, grouped heads repeated as transformers does, the boolean
             left-padding mask) against `CompiledAttention` on the same tensors, in the layouts
             the model hands over
  RMSNorm    a Qwen3 norm module's own forward against `compiled_forward`, on the residual stream
             (float32) and on the per-head q/k norms (bfloat16 inputs, float32 weight, autocast)
Before each timed call a 32 MiB buffer is rewritten, so the inputs come from memory as they do
inside a step (the previous operation's output has been evicted by then).

Run: .venv/bin/python benchmarks/layer_ops.py [--reps 30] [--warmup 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from foresight.opd import fused
from foresight.opd.attention import CompiledAttention
from foresight.opd.rms_norm import compiled_forward

# name: (batch, heads, kv heads, tokens, head dim, hidden): vs_trl.py's sizes at a typical length.
SHAPES = {
    "tiny": (64, 4, 2, 40, 32, 128),
    "small": (32, 8, 4, 40, 32, 256),
    "smollm2": (8, 9, 3, 100, 64, 576),
}


def attention_inputs(batch, heads, kv_heads, length, dim, generator):
    start = torch.randint(0, length // 3, (batch,), generator=generator)  # left padding
    real = torch.arange(length)[None] >= start[:, None]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = (causal & real[:, None, :])[:, None]  # (B, 1, T, T), as transformers' sdpa_mask

    def leaf(*shape):
        # (B, T, heads, d) transposed: the layout the model's projections hand over
        x = torch.randn(batch, length, *shape, dim, generator=generator).transpose(1, 2)
        return x.requires_grad_()

    return leaf(heads), leaf(kv_heads), leaf(kv_heads), mask


def library_attention(query, key, value, mask):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return out.transpose(1, 2).contiguous()


def compiled_attention(query, key, value, mask):
    return CompiledAttention.apply(query, key, value, mask, query.shape[-1] ** -0.5)


def timed(calls: dict, reps: int, warmup: int) -> dict[str, float]:
    """Median CPU ms of each call, alternating, the cache cleared before each."""
    flush = torch.zeros(8 << 20)
    times = {name: [] for name in calls}
    for rep in range(warmup + reps):
        order = list(calls) if rep % 2 == 0 else list(calls)[::-1]
        for name in order:
            flush.add_(1.0)
            start = time.process_time()
            calls[name]()
            if rep >= warmup:
                times[name].append(time.process_time() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def forward_backward(function, *inputs):
    def run():
        out = function(*inputs)
        out.backward(torch.ones_like(out))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    assert fused.layer_ops() is not None, "the compiled layer ops could not be built here"
    generator = torch.Generator().manual_seed(0)
    print(f"{'size':<8}{'operation':<34}{'library ms':>11}{'compiled ms':>12}{'ratio':>7}")
    for size, (batch, heads, kv_heads, length, dim, hidden) in SHAPES.items():
        q, k, v, mask = attention_inputs(batch, heads, kv_heads, length, dim, generator)
        rows = {
            "attention forward": {
                "library": lambda: library_attention(q.detach(), k.detach(), v.detach(), mask),
                "compiled": lambda: compiled_attention(q.detach(), k.detach(), v.detach(), mask),
            },
            "attention forward + backward": {
                "library": forward_backward(library_attention, q, k, v, mask),
                "compiled": forward_backward(compiled_attention, q, k, v, mask),
            },
        }
        for label, width, shape, dtype in (
            ("RMSNorm, residual (float32)", hidden, (batch, length, hidden), torch.float32),
            ("RMSNorm, q heads (bfloat16 in)", dim, (batch, length, heads, dim), torch.bfloat16),
        ):
            norm = Qwen3RMSNorm(width)
            x = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
            rows[label + " f+b"] = {
                "library": forward_backward(norm, x),
                "compiled": forward_backward(lambda h, norm=norm: compiled_forward(norm, h), x),
            }
        for operation, calls in rows.items():
            ms = timed(calls, args.reps, args.warmup)
            ratio = ms["library"] / ms["compiled"]
            print(
                f"{size:<8}{operation:<34}{ms['library']:>11.2f}{ms['compiled']:>12.2f}"
                f"{ratio:>6.2f}x"
            )


if __name__ == "__main__":
    main()
