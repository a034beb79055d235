"""CPU attention of the training and scoring passes (opd/attention.py, attention.cpp).

The compiled kernel against a brute-force float64 softmax attention (values and gradients): causal
without a mask, left padding (queries with no key at all), arbitrary masks with holes, per-head
masks, grouped-query heads, head dims that leave partial vectors, one token, strided inputs. Then
the attention function inside a model: the same padding masks and results as the library's SDPA,
and under bfloat16 autocast gradients at least as close to float64 as the library's own attention.

Run: .venv/bin/python -m pytest tests/opd/test_attention.py -q
"""

from __future__ import annotations

import copy

import pytest
import torch

from foresight.models import load_model, load_tokenizer
from foresight.opd import attention, fused
from foresight.opd.attention import NAME, CompiledAttention, cpu_attention_for
from foresight.opd.rollout import encode_prompts, left_pad, positions

PROMPTS = ["1+2=", "12+3+4=", "7=", "45+67+8=", "9+9=", "3+40+1+1="]


def reference(query, key, value, mask, scale):
    """Softmax attention in float64, head by head: (B, T, H, d); a query with no key gives 0."""
    batch, heads, length, _ = query.shape
    groups = heads // key.shape[1]
    if mask is None:
        mask = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, -1, -1)
    out = torch.zeros(batch, length, heads, query.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            allowed = mask[b, h if mask.shape[1] > 1 else 0]  # (T, T)
            q, k, v = query[b, h].double(), key[b, h // groups].double(), value[b, h // groups]
            scores = (q @ k.T * scale).masked_fill(~allowed, float("-inf"))
            weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: 0
            out[b, :, h] = weights @ v.double()
    return out


def inputs(batch, heads, kv_heads, length, dim, mask_kind, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    # Queries and values in the library's layout: (B, T, heads, d) transposed, not contiguous.
    query = randn(batch, length, heads, dim).transpose(1, 2)
    key = randn(batch, kv_heads, length, dim)
    value = randn(batch, length, kv_heads, dim).transpose(1, 2)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = None
    if mask_kind == "left_padding":
        start = torch.randint(0, length, (batch,), generator=generator)
        start[0] = 0
        real = torch.arange(length)[None] >= start[:, None]  # (B, T)
        mask = (causal & real[:, None, :])[:, None]  # padding queries see no key at all
    elif mask_kind == "holes":
        mask = torch.rand(batch, 1, length, length, generator=generator) < 0.6
        mask[:, :, 1] = False  # one query with no key
    elif mask_kind == "per_head":
        mask = (torch.rand(batch, heads, length, length, generator=generator) < 0.5) & causal
    return query, key, value, mask


CASES = {
    "causal, 2 query heads per kv head": (3, 4, 2, 40, 32, None),
    "left padding, head dim 8": (4, 2, 1, 5, 8, "left_padding"),
    "holes, head dim 34": (2, 3, 3, 37, 34, "holes"),
    "per-head masks": (2, 4, 2, 19, 16, "per_head"),
    "one token": (2, 2, 1, 1, 32, "left_padding"),
    "SmolLM2's heads, 70 tokens": (2, 9, 3, 70, 64, "left_padding"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_kernel_is_softmax_attention_and_its_gradient(case, dtype):
    query, key, value, mask = inputs(*CASES[case], dtype)
    scale = query.shape[-1] ** -0.5
    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    result = CompiledAttention.apply(*leaves, mask, scale)
    leaves64 = [t.detach().double().requires_grad_() for t in (query, key, value)]
    expected = reference(*leaves64, mask, scale)
    # float32: within a few float32 roundings of the float64 result (values are O(1)).
    tolerance = (
        {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 0, "atol": 1e-5}
    )
    torch.testing.assert_close(result.double(), expected.detach(), **tolerance)
    grad_result = torch.randn(result.shape, generator=torch.Generator().manual_seed(1))
    (result * grad_result.to(dtype)).sum().backward()
    (expected * grad_result.double()).sum().backward()
    for ours, theirs in zip(leaves, leaves64):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, **tolerance)


def test_gradcheck():
    query, key, value, mask = inputs(2, 4, 2, 9, 8, "left_padding", torch.float64, seed=3)
    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: CompiledAttention.apply(q, k, v, mask, 0.3), leaves
    )


def test_the_kernel_refuses_mismatched_inputs():
    query, key, value, mask = inputs(2, 4, 2, 6, 8, "left_padding", torch.float32)
    ops = fused.layer_ops()
    with pytest.raises(RuntimeError, match="multiple of key/value heads"):
        ops.attention_forward(query[:, :3], key, value, None, 1.0)
    with pytest.raises(RuntimeError, match="mask"):
        ops.attention_forward(query, key, value, mask[:, :, :5], 1.0)
    with pytest.raises(RuntimeError, match="share a dtype"):
        ops.attention_forward(query, key.double(), value, mask, 1.0)


def test_the_compiled_attention_builds_here():
    # CI machines have g++ (README): the training attention must not quietly fall back.
    assert fused.layer_ops() is not None


def batch(folder):
    tokenizer = load_tokenizer(folder, "student")
    ids, mask = left_pad(encode_prompts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    assert not bool(mask.all())  # left padding: the mask matters
    return ids, mask


def last_hidden_and_grads(model, ids, mask, autocast=False):
    """The decoder's last hidden states on real positions and the gradients of a fixed weighted
    sum of them (float64 on the way out, so only the forward's precision differs)."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hidden = model.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).last_hidden_state  # (B, T, H)
    hidden = hidden.double() * mask[..., None]  # padding positions are never read
    weights = torch.linspace(-1, 1, hidden.numel(), dtype=torch.float64).view_as(hidden)
    (hidden * weights).sum().backward()
    grads = torch.cat([p.grad.double().flatten() for p in model.get_decoder().parameters()])
    return hidden.detach(), grads


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "sdpa fallback"])
def test_cpu_attention_is_the_library_sdpa_with_its_masks(micro_pair, monkeypatch, compiled):
    if not compiled:
        monkeypatch.setattr(attention, "compiled_applies", lambda *args: False)
    ids, mask = batch(micro_pair[0])
    library = load_model(micro_pair[0], "student").double()
    ours = copy.deepcopy(library)
    cpu_attention_for(ours)
    assert ours.config._attn_implementation == NAME
    calls = []
    monkeypatch.setattr(CompiledAttention, "apply", _counting(CompiledAttention.apply, calls))
    hidden_library, grads_library = last_hidden_and_grads(library, ids, mask)
    hidden_ours, grads_ours = last_hidden_and_grads(ours, ids, mask)
    assert len(calls) == (len(ours.model.layers) if compiled else 0)
    torch.testing.assert_close(hidden_ours, hidden_library, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_ours, grads_library, rtol=1e-10, atol=1e-12)


def _counting(function, calls):
    def counted(*args):
        calls.append(1)
        return function(*args)

    return counted


def errors_against_float64(folder, autocast=False):
    """Relative errors (hidden states, gradients) against the float64 model, with `cpu_attention`
    and with the library's attention: ((ours), (library))."""
    ids, mask = batch(folder)
    hidden_ref, grads_ref = last_hidden_and_grads(load_model(folder, "student").double(), ids, mask)
    library = load_model(folder, "student")
    ours = copy.deepcopy(library)
    cpu_attention_for(ours)

    def errors(model):
        hidden, grads = last_hidden_and_grads(model, ids, mask, autocast)
        return (
            float((hidden - hidden_ref).norm() / hidden_ref.norm()),
            float((grads - grads_ref).norm() / grads_ref.norm()),
        )

    return errors(ours), errors(library)


def test_float32_models_are_as_close_to_float64_as_the_library(micro_pair):
    (hidden_err, grad_err), (hidden_err_library, grad_err_library) = errors_against_float64(
        micro_pair[0]
    )
    # Measured: ~1.3e-7 and ~2.7e-7 for both.
    assert hidden_err < 1e-6 and grad_err < 2e-6, (hidden_err, grad_err)
    assert hidden_err <= 1.5 * hidden_err_library and grad_err <= 1.5 * grad_err_library


def test_under_autocast_gradients_stay_close_to_float64(micro_pair):
    (hidden_err, grad_err), (_, grad_err_library) = errors_against_float64(
        micro_pair[0], autocast=True
    )
    # bfloat16 matmuls keep ~3 significant digits: errors of a few 1e-3, never a wrong mask's O(1).
    assert hidden_err < 2e-2 and grad_err < 2e-2, (hidden_err, grad_err)
    assert grad_err <= grad_err_library * 1.1, (grad_err, grad_err_library)


def test_what_the_kernel_does_not_cover_goes_to_the_library():
    query, key, value, mask = inputs(2, 4, 2, 6, 8, "left_padding", torch.float32)
    module = torch.nn.Module()

    def applies(q=query, k=key, v=value, m=mask, dropout=0.0, **kwargs):
        return attention.compiled_applies(module, q, k, v, m, dropout, True, kwargs)

    assert applies()
    assert not applies(dropout=0.1)
    assert not applies(softcap=30.0)
    assert not applies(m=mask.float())
    assert not applies(v=value[..., :4])  # value head dim != key head dim (latent attention)
    assert not applies(k=key[:1], v=value[:1])  # a broadcast batch
    assert not applies(q=query[:, :, :3], m=mask[..., :3, :])  # fewer queries than keys


def test_a_model_with_another_attention_keeps_it(micro_pair):
    model = load_model(micro_pair[0], "student")
    model.set_attn_implementation("eager")
    cpu_attention_for(model)
    assert model.config._attn_implementation == "eager"


def test_two_threads_give_the_one_thread_result():
    query, key, value, mask = inputs(4, 4, 2, 23, 16, "left_padding", torch.float32)
    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            result = CompiledAttention.apply(*leaves, mask, 0.25)
            grads = torch.autograd.grad(result.sum(), leaves)
            results.append((result, *grads))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):  # work units own their rows: no sum changes order
        assert torch.equal(one, two)
