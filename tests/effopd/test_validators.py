"""EffOPD's validators for any trainer: the KL signal against a brute-force float64 reference on
fixed completions, the reward signal as the mean of the function over the sampled completions,
prompt encoding (one BOS, chat templates, the same ids as foresight's rollouts), sampling from the
full distribution whatever the model's generation_config says, and the trainer's delegation.

Run: .venv/bin/python -m pytest tests/effopd/test_validators.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from builders import save_micro_model
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, AutoTokenizer

from foresight.effopd.validators import (
    Completions,
    encode_prompts,
    kl_validator,
    mean_reverse_kl,
    prompts_with_bos,
    reward_validator,
    sample,
    search_seed,
)
from foresight.errors import UserError
from foresight.tasks import TASKS
from foresight.templates import set_chat_mode
from foresight.train.evaluate import effopd_validator
from foresight.train.rollout import encode_prompts as rollout_encode_prompts

PROMPTS = ["3+4=", "12-5+1=", "7=", "2*3="]
# A minimal chat template: what matters is that the validator renders through it.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def load(folder, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype).eval()


@pytest.fixture
def tokenizer(micro_pair):
    return AutoTokenizer.from_pretrained(micro_pair[0], local_files_only=True)


def by_hand(tokenizer, prompts: list[str], completions: list[list[int]]) -> Completions:
    """Completions built from fixed token lists, independently of `sample`: prompts left-padded,
    completions right-padded."""
    prompt_ids = encode_prompts(tokenizer, prompts)
    width, length, pad = max(map(len, prompt_ids)), max(map(len, completions)), 0
    rows, attention, completion_mask = [], [], []
    for prompt, completion in zip(prompt_ids, completions):
        left, right = width - len(prompt), length - len(completion)
        rows.append([pad] * left + prompt + completion + [pad] * right)
        attention.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
        completion_mask.append([1] * len(completion) + [0] * right)
    return Completions(
        torch.tensor(rows), torch.tensor(attention), width, torch.tensor(completion_mask), []
    )


def brute_force_kl(student, teacher, tokenizer, prompts, completions, shift=0) -> float:
    """Σ over completion tokens of Σ_v p_S(v)(log p_S(v) − log p_T(v)), one unpadded row at a
    time, an explicit loop over the vocabulary, divided by the token count. `shift` moves the
    scored position (a deliberate off-by-one, to show what an error would cost)."""
    total, count = 0.0, 0
    for prompt, completion in zip(encode_prompts(tokenizer, prompts), completions):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            student_logp = torch.log_softmax(student(input_ids=ids).logits[0].double(), -1)
            teacher_logp = torch.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
        for j in range(len(completion)):
            at = len(prompt) - 1 + j + shift  # the position that predicts completion token j
            s, t = student_logp[at].tolist(), teacher_logp[at].tolist()
            total += sum(math.exp(s[v]) * (s[v] - t[v]) for v in range(len(s)))
            count += 1
    return total / count


def test_kl_signal_matches_a_float64_brute_force_on_fixed_completions(
    micro_pair, tokenizer, monkeypatch
):
    student, teacher = (load(folder, torch.float64) for folder in micro_pair)
    eos = tokenizer.eos_token_id
    ids = tokenizer(["7", "6,6+1=8", "", "66"], add_special_tokens=False)["input_ids"]
    # An ended completion, one cut at the length limit, a lone EOS (length 1), one of two tokens.
    completions = [ids[0] + [eos], ids[1], [eos], ids[3]]
    got = mean_reverse_kl(student, teacher, by_hand(tokenizer, PROMPTS, completions))
    expected = brute_force_kl(student, teacher, tokenizer, PROMPTS, completions)
    # Both sides compute in float64 and differ only in the order of operations (padded batch vs
    # one row). Each logit comes out of a few hundred float64 operations on O(1..10) values, so it
    # is off by ≲ 1e3·2^-53·10 ≈ 1e-12, and the KL (derivative w.r.t. a logit bounded by a few
    # times |log p_S − log p_T| ≲ 10 here) by ≲ 1e-10: atol 1e-9. An off-by-one in the scored
    # position moves the value by far more (checked), so the comparison can fail.
    assert expected > 0.1  # the teacher is sharpened: a clearly non-zero KL
    assert got == pytest.approx(expected, rel=0, abs=1e-9)
    shifted = brute_force_kl(student, teacher, tokenizer, PROMPTS, completions, shift=-1)
    assert abs(shifted - expected) > 1e-3
    assert mean_reverse_kl(teacher, teacher, by_hand(tokenizer, PROMPTS, completions)) == 0.0
    # One row per forward (what a large vocabulary gets): the same value, to float64 rounding.
    monkeypatch.setattr("foresight.effopd.validators.KL_CHUNK_LOGITS", 1)
    by_row = mean_reverse_kl(student, teacher, by_hand(tokenizer, PROMPTS, completions))
    assert by_row == pytest.approx(expected, rel=0, abs=1e-9)


def test_kl_validator_scores_candidates_on_completions_sampled_once_from_the_student(
    micro_pair, tokenizer
):
    student, teacher = load(micro_pair[0]), load(micro_pair[1])
    validator = kl_validator(PROMPTS, teacher, student, tokenizer, max_new_tokens=8, seed=3)
    score = validator(5)  # samples from the student's weights now
    drawn = sample(student, tokenizer, encode_prompts(tokenizer, PROMPTS), 8, search_seed(3, 5))
    with torch.no_grad():  # a candidate that moved: the completions stay those of W_t
        for param in student.parameters():
            param.mul_(1.5)
    assert score(student) == -mean_reverse_kl(student, teacher, drawn)
    assert score(teacher) == 0.0


def test_reward_signal_is_the_mean_of_the_function_over_the_sampled_completions(
    micro_pair, tokenizer
):
    model = load(micro_pair[0])
    rows = [{"prompt": p, "bonus": float(i)} for i, p in enumerate(PROMPTS)]
    seen = []

    def reward(completion, row):
        seen.append((completion, row))
        return len(completion) + row["bonus"]

    validator = reward_validator(PROMPTS, reward, tokenizer, max_new_tokens=8, seed=3, rows=rows)
    rng_before = torch.get_rng_state()
    value = validator(5)(model)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the trainer's RNG is left alone
    drawn = sample(model, tokenizer, encode_prompts(tokenizer, PROMPTS), 8, search_seed(3, 5))
    assert seen == list(zip(drawn.texts, rows))  # each completion with its own row, in order
    expected = sum(len(text) + row["bonus"] for text, row in zip(drawn.texts, rows)) / len(rows)
    assert value == pytest.approx(expected, rel=1e-15)  # the same sum, in another order
    # Common random numbers: the same weights score the same within a search, not across them.
    assert validator(5)(model) == value
    assert [text for text, _ in seen[4:8]] == drawn.texts
    # Without rows the example is the prompt itself.
    prompts_seen = []
    reward_validator(
        PROMPTS, lambda c, p: prompts_seen.append(p) or 0.0, tokenizer, max_new_tokens=2, seed=0
    )(1)(model)
    assert prompts_seen == PROMPTS


def test_sample_draws_from_the_full_distribution_whatever_the_generation_config(
    micro_pair, tokenizer
):
    plain, truncated = load(micro_pair[1]), load(micro_pair[1])
    # What a chat model's generation_config may carry: generate would otherwise apply it.
    truncated.generation_config.top_k = 1
    truncated.generation_config.top_p = 0.5
    truncated.generation_config.temperature = 0.3
    truncated.generation_config.repetition_penalty = 1.5
    prompt_ids = encode_prompts(tokenizer, PROMPTS * 4)
    drawn = sample(plain, tokenizer, prompt_ids, 12, seed=7)
    again = sample(truncated, tokenizer, prompt_ids, 12, seed=7)
    assert torch.equal(drawn.ids, again.ids) and drawn.texts == again.texts
    assert len(set(drawn.texts)) > 1  # sampled, not greedy: the 4 copies of a prompt differ
    eos = tokenizer.eos_token_id
    generated = drawn.ids[:, drawn.prompt_width :]
    for row, mask, text in zip(generated, drawn.completion_mask, drawn.texts):
        kept = row[mask == 1].tolist()
        # The mask covers the tokens up to and including the first EOS, and nothing after it.
        ends = [i for i, token in enumerate(row.tolist()) if token == eos]
        assert len(kept) == (ends[0] + 1 if ends else len(row))
        assert text == tokenizer.decode([t for t in kept if t != eos], skip_special_tokens=True)


def test_raw_prompts_get_exactly_one_bos_and_chat_prompts_the_template(tokenizer):
    bos = tokenizer.bos_token_id
    plain, written = encode_prompts(tokenizer, ["3+4=", tokenizer.bos_token + "3+4="])
    assert plain == written and plain[0] == bos and plain.count(bos) == 1
    # TRL encodes the raw text with the tokenizer's own special tokens (none for this one), so
    # prompts_with_bos writes BOS into it; a tokenizer that adds BOS itself keeps the text.
    assert prompts_with_bos(tokenizer, ["3+4="]) == ["<bos>3+4="]
    assert tokenizer(prompts_with_bos(tokenizer, ["3+4="]))["input_ids"] == [plain]
    assert prompts_with_bos(tokenizer, ["<bos>3+4="]) == ["<bos>3+4="]
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    assert prompts_with_bos(tokenizer, ["3+4="]) == ["3+4="]

    with pytest.raises(UserError, match="no chat template"):
        encode_prompts(tokenizer, [[{"role": "user", "content": "3+4="}]])
    tokenizer.chat_template = TEMPLATE
    messages = [{"role": "user", "content": "3+4="}]
    rendered = "<bos>user:3+4=\nassistant:"
    assert encode_prompts(tokenizer, [messages]) == [
        tokenizer(rendered, add_special_tokens=False)["input_ids"]
    ]
    with pytest.raises(UserError, match="string or as a list of chat messages"):
        encode_prompts(tokenizer, [42])
    with pytest.raises(UserError, match="no prompts"):
        encode_prompts(tokenizer, [])


@pytest.mark.parametrize("chat", ["never", "always"])
def test_the_trainer_validator_encodes_prompts_as_the_rollouts_do(
    micro_pair, tokenizer, chat, monkeypatch
):
    """`foresight train` delegates: its accuracy signal is the reward validator with the task's
    verifier, on prompts encoded to the very ids the student trains on."""
    tokenizer.chat_template = TEMPLATE
    set_chat_mode(tokenizer, chat, "student")
    task = TASKS["arith"](None)
    examples = task.sample("train", 6, 0)
    model = load(micro_pair[1])
    captured = {}

    def spy(model, tokenizer, prompt_ids, max_new_tokens, seed):
        captured["ids"] = prompt_ids
        drawn = sample(model, tokenizer, prompt_ids, max_new_tokens, seed)
        captured["texts"] = drawn.texts
        return drawn

    monkeypatch.setattr("foresight.effopd.validators.sample", spy)
    value = effopd_validator("accuracy", task, tokenizer, examples, 12, 0, model)(2)(model)
    assert captured["ids"] == rollout_encode_prompts(tokenizer, [e.prompt for e in examples])
    verified = [task.verify(t, e.answer) for t, e in zip(captured["texts"], examples)]
    assert value == sum(verified) / len(examples)


def test_bad_validator_input_is_refused(micro_pair, tokenizer, tmp_path):
    student = load(micro_pair[0])
    with pytest.raises(UserError, match="4 prompts but 3 rows"):
        reward_validator(
            PROMPTS, lambda c, r: 0.0, tokenizer, max_new_tokens=4, seed=0, rows=[1, 2, 3]
        )
    with pytest.raises(UserError, match="at least 1"):
        reward_validator(PROMPTS, lambda c, r: 0.0, tokenizer, max_new_tokens=0, seed=0)
    other = load(save_micro_model(tmp_path / "other", 0, alphabet="0123456789+-*=,#xyz"))
    validator = kl_validator(PROMPTS, other, student, tokenizer, max_new_tokens=4, seed=0)
    with pytest.raises(UserError, match="the student's vocabulary"):
        validator(1)(student)
