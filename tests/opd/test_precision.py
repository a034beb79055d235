"""The student's float32 attention under bfloat16 autocast (opd/precision.py) is the library's SDPA
attention: the same padding masks, the same outputs in float32, and under autocast gradients at
least as close to the float64 reference as the library's own bfloat16 attention.

Reference: the same micro model in float64 with the library's "sdpa" attention, on a left-padded
batch (prompts of different lengths), so a missing padding mask cannot go unnoticed.

Run: .venv/bin/python -m pytest tests/opd/test_precision.py -q
"""

from __future__ import annotations

import copy

import torch

from foresight.models import load_model, load_tokenizer
from foresight.opd.precision import NAME, float32_attention_on_cpu
from foresight.opd.rollout import encode_prompts, left_pad, positions

PROMPTS = ["1+2=", "12+3+4=", "7=", "45+67+8=", "9+9=", "3+40+1+1="]


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


def test_float32_attention_is_the_library_sdpa_with_its_masks(micro_pair):
    ids, mask = batch(micro_pair[0])
    library = load_model(micro_pair[0], "student")
    ours = copy.deepcopy(library)
    float32_attention_on_cpu(ours)
    assert ours.config._attn_implementation == NAME
    hidden_library, grads_library = last_hidden_and_grads(library, ids, mask)
    hidden_ours, grads_ours = last_hidden_and_grads(ours, ids, mask)
    torch.testing.assert_close(hidden_ours, hidden_library, rtol=0, atol=1e-6)
    torch.testing.assert_close(grads_ours, grads_library, rtol=1e-5, atol=1e-7)


def test_under_autocast_gradients_stay_close_to_float64(micro_pair):
    ids, mask = batch(micro_pair[0])
    reference = load_model(micro_pair[0], "student").double()
    hidden_ref, grads_ref = last_hidden_and_grads(reference, ids, mask)
    library = load_model(micro_pair[0], "student")
    ours = copy.deepcopy(library)
    float32_attention_on_cpu(ours)

    def errors(model):
        hidden, grads = last_hidden_and_grads(model, ids, mask, autocast=True)
        return (
            float((hidden - hidden_ref).norm() / hidden_ref.norm()),
            float((grads - grads_ref).norm() / grads_ref.norm()),
        )

    (hidden_err, grad_err), (_, grad_err_library) = errors(ours), errors(library)
    # bfloat16 matmuls keep ~3 significant digits: errors of a few 1e-3, never a wrong mask's O(1).
    assert hidden_err < 2e-2 and grad_err < 2e-2, (hidden_err, grad_err)
    assert grad_err <= grad_err_library * 1.1, (grad_err, grad_err_library)


def test_a_model_with_another_attention_keeps_it(micro_pair):
    model = load_model(micro_pair[0], "student")
    model.set_attn_implementation("eager")
    float32_attention_on_cpu(model)
    assert model.config._attn_implementation == "eager"
