"""Sampling and masks: prompt masked, EOS trained, padding never trained (also when pad == eos).

Run: .venv/bin/python -m pytest tests/train/test_rollout.py -q
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from foresight.models import build_char_tokenizer, load_model, load_tokenizer
from foresight.train.loss import masked_sum_loss
from foresight.train.rollout import decode_completions, sample, teacher_forced
from foresight.train.scoring import score_tokens


class ScriptedModel(torch.nn.Module):
    """Mock LM: the row whose prompt has p real tokens puts all mass on script[p][k] for its k-th new
    token. Rows are told apart by their real-token count, not their index: rows that stopped leave
    the batch. Records the batch size of every forward pass."""

    def __init__(self, script: dict[int, list[int]], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab, self.calls, self.batch_sizes = script, vocab, 0, []
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        assert attention_mask.shape == (input_ids.shape[0], attention_mask.shape[1])
        assert logits_to_keep == 1  # the LM head runs on the last column only
        self.batch_sizes.append(input_ids.shape[0])
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e9)
        for row in range(input_ids.shape[0]):
            tokens = self.script[int(attention_mask[row].sum()) - self.calls]
            logits[row, -1, tokens[min(self.calls, len(tokens) - 1)]] = 0.0
        self.calls += 1
        return SimpleNamespace(logits=logits)


@pytest.fixture(params=["distinct_pad", "pad_is_eos"])
def tokenizer(request):
    tokenizer = build_char_tokenizer("0123456789+=#")
    if request.param == "pad_is_eos":
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def test_sample_masks_follow_generation_not_token_ids(tokenizer):
    eos = tokenizer.eos_token_id
    five, six = tokenizer.convert_tokens_to_ids(["5", "6"])
    # Keyed by prompt length with BOS: row 2 never stops and hits the cap.
    script = {5: [five, six, eos], 3: [eos], 6: [six, six, six, six]}
    model = ScriptedModel(script, len(tokenizer))
    rollout = sample(
        model,
        tokenizer,
        ["1+2=", "3=", "45+6="],
        max_new_tokens=4,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    width = rollout.prompt_width
    assert width == 6  # BOS + longest prompt
    assert rollout.completion_mask[:, :width].sum() == 0  # the prompt is never trained
    assert rollout.completion_mask[:, width:].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert rollout.ids[0, width : width + 3].tolist() == [five, six, eos]  # EOS kept and masked in
    assert rollout.ids[1, width + 1 :].tolist() == [tokenizer.pad_token_id] * 3
    assert decode_completions(tokenizer, rollout) == ["56", "", "6666"]
    # Left padding: each row's positions start at 0 on its first real token.
    assert rollout.position_ids[1, width - 3 : width].tolist() == [0, 1, 2]
    # Stopped rows leave the forward passes; none runs after the last token.
    assert model.batch_sizes == [3, 2, 2, 1]


def test_loss_sees_completion_and_eos_but_never_prompt_or_padding(micro_pair, tokenizer):
    model = load_model(micro_pair[0], "student").double()
    base_tokenizer = load_tokenizer(micro_pair[0], "student")
    tokenizer = (
        base_tokenizer
        if tokenizer.pad_token_id != tokenizer.eos_token_id
        else _pad_as_eos(base_tokenizer)
    )
    rollout = teacher_forced(tokenizer, ["1+2=", "12+3="], ["1+2=3#3", "4#4"])
    mask = rollout.completion_mask[:, 1:].double()  # (B, T-1): position t predicts ids[:, t+1]
    assert mask.sum(1).tolist() == [8.0, 4.0]  # every completion char plus its EOS

    def loss_of(ids: torch.Tensor) -> float:
        changed = type(rollout)(
            ids,
            rollout.attention_mask,
            rollout.position_ids,
            rollout.completion_mask,
            rollout.prompt_width,
        )
        scores = score_tokens(model, changed)
        return masked_sum_loss(-scores.student_logprobs, mask, mask.sum()).item()

    reference = loss_of(rollout.ids)
    padded = rollout.ids.clone()
    padded[1, -1] = 7  # a pad position after row 1's EOS: must not matter
    assert loss_of(padded) == pytest.approx(reference, abs=1e-12)
    no_eos = rollout.ids.clone()
    no_eos[1, rollout.prompt_width + 2] = 7  # row 1's EOS: must matter
    assert loss_of(no_eos) != pytest.approx(reference, abs=1e-6)


def _pad_as_eos(tokenizer):
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def test_scoring_skips_the_head_on_positions_that_predict_the_prompt(micro_pair):
    """The LM heads see only positions P-1.. (those predicting completion tokens); the scores
    there equal a float64 full-sequence log-softmax, and the prompt's columns are zeros."""
    student = load_model(micro_pair[0], "student").double()
    teacher = load_model(micro_pair[1], "teacher").double()
    tokenizer = load_tokenizer(micro_pair[0], "student")
    rollout = sample(
        student, tokenizer, ["1+2=", "45+67+8="], 6, 1.0, torch.Generator().manual_seed(0)
    )
    seen = []
    for model in (student, teacher):
        model.get_output_embeddings().register_forward_hook(
            lambda m, i, out: seen.append(out.shape[1])
        )
    with torch.no_grad():
        scores = score_tokens(student, rollout, teacher, kind="reverse_kl")
    width, total = rollout.prompt_width, rollout.ids.shape[1]
    assert seen and set(seen) == {total - width}  # one chunk each, completion columns only
    inputs = {"attention_mask": rollout.attention_mask, "position_ids": rollout.position_ids}
    with torch.no_grad():
        student_logp = torch.log_softmax(student(rollout.ids, **inputs).logits[:, :-1], dim=-1)
        teacher_logp = torch.log_softmax(teacher(rollout.ids, **inputs).logits[:, :-1], dim=-1)
    next_ids = rollout.ids[:, 1:, None]
    mask = rollout.completion_mask[:, 1:].bool()
    expected = {
        "student_logprobs": student_logp.gather(-1, next_ids)[..., 0],
        "teacher_logprobs": teacher_logp.gather(-1, next_ids)[..., 0],
        "divergence": (student_logp.exp() * (student_logp - teacher_logp)).sum(-1),
    }
    for name, reference in expected.items():
        got = getattr(scores, name)
        torch.testing.assert_close(got[mask], reference[mask], rtol=0, atol=1e-10)
        assert not got[:, : width - 1].any(), name


def test_sampling_stops_at_every_end_token_of_the_generation_config(micro_pair, tmp_path):
    """A model whose generation_config lists a second end token (chat models often do) stops each
    row at either; the row counts as ended, and its text drops the end token."""
    import shutil

    from transformers import GenerationConfig

    from foresight.train.rollout import ended_with_eos

    folder = tmp_path / "two_ends"
    shutil.copytree(micro_pair[0], folder)
    model = load_model(folder, "student").double()
    tokenizer = load_tokenizer(folder, "student")
    prompts = ["1+2=", "12+3=", "7=", "45+67+8="] * 4

    def draw(tok):
        return sample(model, tok, prompts, 12, 1.0, torch.Generator().manual_seed(3))

    plain = draw(tokenizer)
    eos = tokenizer.eos_token_id
    generated = plain.completion_mask[:, plain.prompt_width :].bool()
    counts = torch.bincount(plain.ids[:, plain.prompt_width :][generated])
    counts[[eos, tokenizer.pad_token_id]] = 0
    second = int(counts.argmax())  # the token sampled most often becomes a second end token
    GenerationConfig(eos_token_id=[eos, second]).save_pretrained(folder)
    tokenizer = load_tokenizer(folder, "student")
    rollout = draw(tokenizer)
    rows = rollout.completion_ids()
    assert any(row[-1] == second for row in rows)
    texts = decode_completions(tokenizer, rollout)
    for row, ended, text in zip(rows, ended_with_eos(tokenizer, rollout), texts):
        ends = [i for i, t in enumerate(row) if t in (eos, second)]
        assert ends in ([], [len(row) - 1])  # nothing is sampled after an end token
        assert ended == bool(ends)
        assert text == tokenizer.decode(row[:-1] if ended else row)
