"""The compiled RMSNorm (opd/rms_norm.py, rms_norm.cpp) is the library's norm.

Each supported norm class (Qwen2, Qwen3, Llama) and dtype pair (the student's float32, Qwen3's
bfloat16 per-head norms under autocast, a bfloat16 teacher, float64), at widths that fill vectors
and that leave partial ones: values and gradients (input and weight) against the library module's
own forward and backward, and against a brute-force float64 formula. Then whole models: the same
hidden states and gradients with the norms routed through the kernel as without.

Run: .venv/bin/python -m pytest tests/opd/test_rms_norm.py -q
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from foresight.models import load_model
from foresight.opd.rms_norm import compiled_forward, cpu_norms_for
from tests.opd.test_attention import batch, last_hidden_and_grads

PAIRS = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.bfloat16),
    (torch.float64, torch.float64),
]


def reference(x, w, eps):
    """w * x / sqrt(mean(x^2) + eps), all in float64."""
    x, w = x.double(), w.double()
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def norm_and_input(cls, width, x_dtype, w_dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    norm = cls(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(width, generator=generator))
    norm = norm.to(w_dtype)
    x = (3 * torch.randn(5, 7, width, generator=generator, dtype=torch.float64)).to(x_dtype)
    return norm, x


def run(norm, x, forward):
    x = x.detach().requires_grad_()
    norm.zero_grad()
    y = forward(norm, x)
    grad_y = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y).to(y.dtype)
    (y * grad_y).sum().backward()
    return y.detach(), x.grad, norm.weight.grad


@pytest.mark.parametrize("cls", [Qwen3RMSNorm, Qwen2RMSNorm, LlamaRMSNorm])
@pytest.mark.parametrize("width", [128, 32, 37])
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{x}-{w}".replace("torch.", "") for x, w in PAIRS])
def test_the_kernel_is_the_library_norm(cls, width, pair):
    norm, x = norm_and_input(cls, width, *pair)
    ours = run(copy.deepcopy(norm), x, compiled_forward)
    library = run(norm, x, lambda module, h: module(h))
    low = torch.bfloat16 in pair
    for name, a, b in zip(("result", "input grad", "weight grad"), ours, library):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # bfloat16: one rounding of the last bit where the order of a sum tips it; float32
        # statistics (float64 inputs too, as the library casts them) otherwise.
        tolerance = {"rtol": 1.6e-2, "atol": 1e-2} if low else {"rtol": 2e-6, "atol": 2e-6}
        torch.testing.assert_close(a, b, **tolerance, msg=name)
    if not low:
        expected = reference(x, norm.weight, 1e-6)
        torch.testing.assert_close(ours[0].double(), expected, rtol=1e-6, atol=1e-6)


def test_float32_results_differ_only_by_the_sum_order():
    norm, x = norm_and_input(Qwen3RMSNorm, 128, torch.float32, torch.float32)
    # A row's rstd may differ in its last bit (the squares summed in another order); nothing else.
    torch.testing.assert_close(compiled_forward(norm, x), norm(x), rtol=5e-7, atol=0)


def test_gradients_match_the_float64_formula():
    # float64 inputs are normalized in float32, as the library does: float32 precision.
    norm, x = norm_and_input(Qwen3RMSNorm, 48, torch.float64, torch.float64)
    _, grad_x, grad_w = run(norm, x, compiled_forward)
    x64 = x.detach().requires_grad_()
    w64 = norm.weight.detach().clone().requires_grad_()
    y = reference(x64, w64, 1e-6)
    grad_y = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
    expected_x, expected_w = torch.autograd.grad((y * grad_y).sum(), (x64, w64))
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-5, atol=1e-6)  # a sum over all rows


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16 autocast"])
def test_a_model_with_compiled_norms_is_the_same_model(micro_pair, autocast):
    ids, mask = batch(micro_pair[0])
    library = load_model(micro_pair[0], "student")
    ours = copy.deepcopy(library)
    cpu_norms_for(ours)
    patched = [m for m in ours.modules() if m.forward.__func__ is compiled_forward]
    assert len(patched) == 2 * len(ours.model.layers) + 1 + 2 * len(ours.model.layers)  # + q/k
    hidden_ours, grads_ours = last_hidden_and_grads(ours, ids, mask, autocast)
    hidden_library, grads_library = last_hidden_and_grads(library, ids, mask, autocast)
    scale = 2e-2 if autocast else 1e-5  # bfloat16 products: a flipped rounding moves ~1e-2
    assert float((hidden_ours - hidden_library).norm() / hidden_library.norm()) < scale / 10
    assert float((grads_ours - grads_library).norm() / grads_library.norm()) < scale


def test_two_threads_sum_the_weight_gradient_as_one():
    # float64: the weight gradient accumulates in float64, so two orders of the sum agree closely.
    norm, x = norm_and_input(Qwen3RMSNorm, 64, torch.float64, torch.float64)
    x = torch.cat([x] * 200)  # enough rows for both threads
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run(copy.deepcopy(norm), x, compiled_forward))
    finally:
        torch.set_num_threads(threads)
    (y1, dx1, dw1), (y2, dx2, dw2) = results
    assert torch.equal(y1, y2) and torch.equal(dx1, dx2)
    # Per-thread partial sums of the weight gradient: another order of the same sum.
    torch.testing.assert_close(dw2, dw1, rtol=1e-10, atol=1e-10)
