"""The compiled one-token decode step (opd/decode_step.cpp) against the Python lean decoder and a
float64 brute-force forward.

Each case runs a prompt pass, then one-token steps in which rows leave the batch (the compiled step
reads the cache through a row map, the Python step compacts it), on Qwen3 (per-head q/k norm, head
dim 8: the vector loops' partial blocks), Qwen2 (Q, K, V biases), Llama (tied embeddings, head dim
16; and with dynamic rotary scaling, whose cos and sin depend on the length) and multi-head
attention, in float32 and under bfloat16 autocast.

Run: .venv/bin/python -m pytest tests/opd/test_decode_step.py -q
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from foresight.models import load_model, load_tokenizer
from foresight.opd import fast_decode, fused
from foresight.opd.fast_decode import LeanDecoder
from foresight.opd.rollout import encode_prompts, left_pad, positions, sample

PROMPTS = ["1+2=", "12+3=", "7=", "45+67+8=", "9+9=", "3+40="]
STEPS = 6
DROPPED = {2: [0, 2, 3, 4, 5], 4: [1, 2, 4]}  # before step k, keep these of the current rows


def _model(kind: str, vocab: int) -> torch.nn.Module:
    shape = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4 if kind == "mha" else 2,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    elif kind == "dynamic_rope":  # cos and sin depend on the length: computed per token
        shape["max_position_embeddings"] = 12  # below the prompt + STEPS columns
        rope = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
        model = LlamaForCausalLM(LlamaConfig(**shape, rope_parameters=rope))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False))
        with torch.no_grad():
            for layer in model.model.layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    projection.bias.normal_()
                layer.self_attn.v_proj.bias.normal_()
    else:  # qwen3 and mha: per-head q/k norms with non-trivial weights, head dim 8
        model = Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=8, tie_word_embeddings=False))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
        model.get_output_embeddings().weight.mul_(4.0)
    return model.eval()


def _steps(model, ids, mask, compiled: bool) -> list[torch.Tensor]:
    """Logits (b, V) of the prompt pass and of STEPS one-token steps, rows leaving per DROPPED."""
    batch, width = ids.shape
    decoder = LeanDecoder(model, batch, width + STEPS, compiled=compiled)
    assert (decoder.compiled_step is not None) == compiled
    attention, position = mask, positions(mask)
    logits = decoder.next_logits(ids, attention, position)
    out, token, position = [logits.float()], ids[:, -1:], position[:, -1:] + 1
    for step in range(STEPS):
        if step in DROPPED:
            keep = torch.tensor(DROPPED[step])
            decoder.select(keep)
            attention, position, token = attention[keep], position[keep], token[keep]
        attention = torch.cat([attention, attention.new_ones(len(attention), 1)], dim=1)
        logits = decoder.next_logits(token, attention, position)
        out.append(logits.float())
        token, position = logits.argmax(-1, keepdim=True) % 7 + 3, position + 1
    return out


def _reference(model, ids, mask) -> list[torch.Tensor]:
    """The same sequence of logits by the float64 model's own forward over whole prefixes."""
    model = model.double()
    attention = mask
    out, seq = [], ids
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=attention, position_ids=positions(attention))
        out.append(logits.logits[:, -1])
        token = ids[:, -1:]
        for step in range(STEPS):
            if step in DROPPED:
                keep = torch.tensor(DROPPED[step])
                seq, attention, token = seq[keep], attention[keep], token[keep]
            seq = torch.cat([seq, token], dim=1)
            attention = torch.cat([attention, attention.new_ones(len(seq), 1)], dim=1)
            logits = model(
                input_ids=seq, attention_mask=attention, position_ids=positions(attention)
            )
            out.append(logits.logits[:, -1])
            token = out[-1].argmax(-1, keepdim=True) % 7 + 3
    model.float()
    return out


@pytest.fixture(scope="module")
def tokenizer(micro_pair):
    return load_tokenizer(micro_pair[0], "student")


def _prompt(tokenizer):
    ids, mask = left_pad(encode_prompts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    return ids, mask


def test_the_compiled_step_builds_here():
    """`make test` machines have a C++ compiler: the compiled step must be there, not fall back."""
    assert fused.decode_step() is not None


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama", "mha", "dynamic_rope"])
def test_compiled_step_matches_python_step_and_float64_reference(tokenizer, kind):
    model = _model(kind, len(tokenizer))
    assert fast_decode.supports(model)
    ids, mask = _prompt(tokenizer)
    with torch.inference_mode():
        compiled = _steps(model, ids, mask, compiled=True)
        python = _steps(model, ids, mask, compiled=False)
    reference = _reference(model, ids, mask)
    for got, same, exact in zip(compiled, python, reference):
        torch.testing.assert_close(got, same, rtol=0, atol=2e-5)
        if kind != "dynamic_rope":  # a cached key keeps the rotation of the length it was made at
            torch.testing.assert_close(got.double(), exact, rtol=0, atol=5e-5)


@pytest.mark.parametrize("kind", ["qwen3", "qwen2"])
def test_compiled_step_under_bfloat16_autocast_matches_the_python_step(tokenizer, kind):
    """Products in bfloat16: the two steps round at the same points, so they agree to about one
    bfloat16 rounding of the logits (the sums inside are ordered differently)."""
    model = _model(kind, len(tokenizer))
    ids, mask = _prompt(tokenizer)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        compiled = _steps(model, ids, mask, compiled=True)
        python = _steps(model, ids, mask, compiled=False)
    reference = _reference(model, ids, mask)
    for got, same, exact in zip(compiled, python, reference):
        scale = exact.abs().max().item()
        torch.testing.assert_close(got, same, rtol=0, atol=2 * 2**-8 * scale)
        # and both are bfloat16-close to the float64 model
        torch.testing.assert_close(got.double(), exact, rtol=0, atol=0.05 * scale)


def test_sampling_through_the_compiled_step_draws_the_python_steps_tokens(micro_pair, tokenizer):
    """Float32: the same rows, the same random stream, the same tokens (rows stop at different
    steps, so the row map is exercised). The two steps' logits differ by ~1e-6, so a draw could in
    principle flip where the uniform number falls that close to a boundary: about one draw in a
    million; these 648 draws are fixed by the seeds."""
    model = load_model(micro_pair[0], "student").eval()
    prompts = PROMPTS * 3
    runs = {}
    for compiled in (True, False):
        step = fused.decode_step if compiled else (lambda: None)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fast_decode, "decode_step", step)
            runs[compiled] = [
                sample(model, tokenizer, prompts, 12, 1.0, torch.Generator().manual_seed(seed))
                for seed in range(3)
            ]
    for a, b in zip(runs[True], runs[False]):
        assert torch.equal(a.ids, b.ids)
        assert torch.equal(a.completion_mask, b.completion_mask)
        lengths = a.completion_mask.sum(1)
        assert lengths.min() < lengths.max(), "rows should stop at different steps"


def test_the_cache_refuses_columns_past_its_capacity(tokenizer):
    model = _model("qwen3", len(tokenizer))
    ids, mask = _prompt(tokenizer)
    with torch.inference_mode():
        decoder = LeanDecoder(model, len(ids), ids.shape[1])  # room for the prompt only...
        capacity = decoder.values[0].shape[2]  # ...padded to the compiled step's column block
        decoder.next_logits(ids, mask, positions(mask))
        attention, position = mask, positions(mask)[:, -1:] + 1
        for _ in range(capacity - ids.shape[1]):
            attention = torch.cat([attention, attention.new_ones(len(ids), 1)], dim=1)
            decoder.next_logits(ids[:, -1:], attention, position)
        attention = torch.cat([attention, attention.new_ones(len(ids), 1)], dim=1)
        with pytest.raises(RuntimeError, match="capacity"):
            decoder.next_logits(ids[:, -1:], attention, position)


def test_switching_the_compiled_step_off(monkeypatch):
    monkeypatch.setenv("FORESIGHT_FUSED_DECODE", "0")
    fused.decode_step.cache_clear()
    try:
        assert fused.decode_step() is None
    finally:
        monkeypatch.delenv("FORESIGHT_FUSED_DECODE")
        fused.decode_step.cache_clear()
    assert fused.decode_step() is not None
