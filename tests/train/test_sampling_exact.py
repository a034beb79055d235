"""The rollout's decode loop draws exactly from the student at the configured temperature.

Reference: a brute-force loop in float64 that re-runs the whole model on every prefix (no KV cache,
no row leaving the batch) and draws each row's next token from softmax(logits / temperature) with
the same generator. The fast loop (KV cache, stopped rows dropped from the cache) must give the same
tokens, masks and positions bit for bit, and its samples re-scored teacher-forced must carry the
reference's log-probabilities.

Run: .venv/bin/python -m pytest tests/train/test_sampling_exact.py -q
"""

from __future__ import annotations

import pytest
import torch

from foresight.models import load_model, load_tokenizer
from foresight.train.rollout import encode_prompts, left_pad, positions, sample
from foresight.train.scoring import score_tokens

PROMPTS = ["1+2=", "12+3=", "7=", "45+67+8=", "9+9=", "3+40="]


def reference_sample(model, tokenizer, prompts, max_new_tokens, temperature, generator):
    """Token by token over the full prefix: (ids (B, T), completion mask (B, G), log p per token)."""
    ids, mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
    alive = torch.ones(len(prompts), dtype=torch.bool)
    new_mask, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).logits[:, -1]  # (B, V)
        probs = torch.softmax(logits.float() / temperature, dim=-1)  # the loop's draw, same bits
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
        chosen = torch.log_softmax(logits / temperature, dim=-1).gather(-1, token[:, None])[:, 0]
        token = torch.where(alive, token, tokenizer.pad_token_id)
        new_mask.append(alive.long())
        logprobs.append(torch.where(alive, chosen, 0.0))
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, alive.long()[:, None]], dim=1)
        alive = alive & (token != tokenizer.eos_token_id)
        if not alive.any():
            break
    return ids, torch.stack(new_mask, dim=1), torch.stack(logprobs, dim=1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_decode_loop_matches_brute_force_reference(micro_pair, temperature):
    model = load_model(micro_pair[0], "student").double().eval()
    tokenizer = load_tokenizer(micro_pair[0], "student")
    prompts = PROMPTS * 3  # 18 rows: long enough that rows stop at different steps
    for seed in range(3):
        fast = sample(
            model, tokenizer, prompts, 12, temperature, torch.Generator().manual_seed(seed)
        )
        with torch.no_grad():
            ids, completion_mask, logprobs = reference_sample(
                model, tokenizer, prompts, 12, temperature, torch.Generator().manual_seed(seed)
            )
        width = fast.prompt_width
        assert torch.equal(fast.ids, ids)
        assert torch.equal(fast.completion_mask[:, width:], completion_mask)
        assert torch.equal(fast.position_ids, positions(fast.attention_mask))
        lengths = completion_mask.sum(1)
        assert lengths.min() < lengths.max(), "rows should stop at different steps"
        # The samples re-scored teacher-forced (at temperature 1) carry the reference's log-probs.
        if temperature == 1.0:
            with torch.no_grad():
                rescored = score_tokens(model, fast).student_logprobs[:, width - 1 :]  # (B, G)
            torch.testing.assert_close(rescored * completion_mask, logprobs, rtol=0, atol=1e-10)


def test_greedy_decode_matches_brute_force_argmax(micro_pair):
    model = load_model(micro_pair[0], "student").double().eval()
    tokenizer = load_tokenizer(micro_pair[0], "student")
    fast = sample(model, tokenizer, PROMPTS, 10, 1.0, None, greedy=True)
    ids, mask = left_pad(encode_prompts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    alive = torch.ones(len(PROMPTS), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(fast.ids.shape[1] - ids.shape[1]):
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
            ).logits[:, -1]
            token = torch.where(alive, logits.argmax(-1), tokenizer.pad_token_id)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, alive.long()[:, None]], dim=1)
            alive = alive & (token != tokenizer.eos_token_id)
    assert torch.equal(fast.ids, ids)
    assert torch.equal(fast.attention_mask, mask)


def _decoder(kind: str, vocab: int) -> torch.nn.Module:
    """Tiny random decoders of two other families (float64, eval): Llama (tied embeddings) and
    Qwen2 (biases on Q, K and V), whose library forwards the decode loop must drive as Qwen3's."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    torch.manual_seed(0)
    if kind == "llama":  # SmolLM2's family: tied embeddings, no biases
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    else:  # Qwen2: biases on Q, K and V
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_()
                layer.self_attn.k_proj.bias.normal_()
                layer.self_attn.v_proj.bias.normal_()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)  # peaked enough that EOS comes up
    return model.double().eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_other_decoders_match_brute_force_reference(micro_pair, kind):
    """Llama and Qwen2 sample exactly too: the KV cache and the dropping of stopped rows work
    through each family's own forward."""
    tokenizer = load_tokenizer(micro_pair[0], "student")
    model = _decoder(kind, len(tokenizer))
    prompts = PROMPTS * 3
    fast = sample(model, tokenizer, prompts, 10, 1.0, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ids, completion_mask, _ = reference_sample(
            model, tokenizer, prompts, 10, 1.0, torch.Generator().manual_seed(1)
        )
    assert torch.equal(fast.ids, ids)
    assert torch.equal(fast.completion_mask[:, fast.prompt_width :], completion_mask)
    lengths = completion_mask.sum(1)
    assert lengths.min() < lengths.max(), "rows should stop at different steps"


@pytest.mark.parametrize("how", ["wrapped", "injected"])
def test_lora_students_sample_exactly(micro_pair, how):
    """A LoRA student (peft-wrapped, or adapters injected in place) samples through peft's forward
    with its adapters applied, and draws the brute-force reference's tokens."""
    import peft

    lora = peft.LoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], r=2, lora_alpha=4)
    base = load_model(micro_pair[0], "student").double()
    model = (peft.get_peft_model if how == "wrapped" else peft.inject_adapter_in_model)(
        *((base, lora) if how == "wrapped" else (lora, base))
    )
    with torch.no_grad():  # B starts at zero; a random B makes the adapters count
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.eval()
    tokenizer = load_tokenizer(micro_pair[0], "student")
    prompts = PROMPTS * 3
    fast = sample(model, tokenizer, prompts, 10, 1.0, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ids, completion_mask, _ = reference_sample(
            model, tokenizer, prompts, 10, 1.0, torch.Generator().manual_seed(2)
        )
        fresh = load_model(micro_pair[0], "student").double().eval()  # no adapters
        unadapted, _, _ = reference_sample(
            fresh, tokenizer, prompts, 10, 1.0, torch.Generator().manual_seed(2)
        )
    assert torch.equal(fast.ids, ids)
    assert torch.equal(fast.completion_mask[:, fast.prompt_width :], completion_mask)
    assert not torch.equal(unadapted, ids)  # the adapters change what is sampled
