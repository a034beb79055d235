"""models.py: any HF folder (sharded safetensors, dtype), gradient checkpointing that changes memory
but not gradients, the pair guards (EOS, vocabulary) and the refusal of logit post-processing.

Run: .venv/bin/python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import pytest
import torch
from builders import MICRO, save_micro_model
from transformers import (
    AutoTokenizer,
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from foresight.errors import UserError
from foresight.models import check_pair, check_plain_head, load_model, load_tokenizer
from foresight.train.loss import masked_sum_loss, sampled_rkl
from foresight.train.rollout import sample
from foresight.train.scoring import score_tokens

SMALL = dict(vocab_size=64, **MICRO)


def test_sharded_folder_loads_every_shard(tmp_path):
    folder = save_micro_model(tmp_path / "whole", 0)
    whole = load_model(folder, "student")
    whole.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "sharded")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()

    sharded = load_model(tmp_path / "sharded", "student")
    expected = whole.state_dict()
    for name, tensor in sharded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_dtype_per_model(micro_pair):
    student_dir, teacher_dir = micro_pair
    assert load_model(student_dir, "student", "float32").dtype == torch.float32
    teacher = load_model(teacher_dir, "teacher", "bfloat16")
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}


def test_gradient_checkpointing_recomputes_and_keeps_loss_and_grads(micro_pair):
    student_dir, teacher_dir = micro_pair
    tokenizer = load_tokenizer(student_dir, "student")
    teacher = load_model(teacher_dir, "teacher").double()
    rollout = sample(
        load_model(student_dir, "student"), tokenizer, ["12+3=", "7-2+11="], 10, 1.0,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    mask = rollout.completion_mask[:, 1:].double()  # (B, T-1)
    results = {}
    for checkpointing in (False, True):
        student = load_model(student_dir, "student", gradient_checkpointing=checkpointing)
        student = student.double().train()
        assert student.is_activation_checkpointing == checkpointing
        calls = []
        # A pre-hook: torch stops the recompute right after the last tensor backward needs, so a
        # post-forward hook of the MLP would not see the second call.
        student.model.layers[0].mlp.register_forward_pre_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        scores = score_tokens(student, rollout, teacher)
        per_token = sampled_rkl(scores.student_logprobs, scores.teacher_logprobs, 0.2)
        loss = masked_sum_loss(per_token, mask, mask.sum())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters()}
        # Checkpointing reruns each layer's forward once more in backward.
        results[checkpointing] = (loss.detach(), grads, len(calls))
    (loss_off, grads_off, calls_off), (loss_on, grads_on, calls_on) = results[False], results[True]
    assert (calls_off, calls_on) == (1, 2)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-12, atol=1e-12)
    assert any(g.abs().max() > 0 for g in grads_off.values())
    for name, grad in grads_off.items():
        torch.testing.assert_close(grads_on[name], grad, rtol=1e-10, atol=1e-12)


def test_differing_eos_is_refused(micro_pair, tmp_path):
    student_dir, teacher_dir = micro_pair
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    tokenizer.eos_token = "<unk>"  # same vocabulary, another EOS id
    teacher_copy = load_model(teacher_dir, "teacher")
    teacher_copy.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    with pytest.raises(UserError, match="EOS id"):
        check_pair(
            load_tokenizer(student_dir, "student"),
            load_tokenizer(tmp_path / "teacher", "teacher"),
            load_model(student_dir, "student"),
            teacher_copy,
        )


def test_differing_vocabulary_is_refused(micro_pair, tmp_path):
    student_dir, _ = micro_pair
    teacher_dir = save_micro_model(tmp_path / "teacher", 1, alphabet="0123456789+-=xyz")
    with pytest.raises(UserError, match="vocabulary differs"):
        check_pair(
            load_tokenizer(student_dir, "student"),
            load_tokenizer(teacher_dir, "teacher"),
            load_model(student_dir, "student"),
            load_model(teacher_dir, "teacher"),
        )


@pytest.mark.parametrize(
    ("model_class", "config", "key"),
    [
        (Gemma2ForCausalLM, Gemma2Config(final_logit_softcapping=30.0, **SMALL), "final_logit"),
        (CohereForCausalLM, CohereConfig(logit_scale=0.0625, **SMALL), "logit_scale"),
        (GraniteForCausalLM, GraniteConfig(logits_scaling=8.0, **SMALL), "logits_scaling"),
    ],
)
def test_logit_post_processing_is_refused(model_class, config, key):
    with pytest.raises(UserError, match=key):
        check_plain_head(model_class(config), "teacher")


def test_unknown_logit_post_processing_is_caught_by_the_forward_probe():
    class ScaledLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            output.logits = output.logits * 2.0
            return output

    torch.manual_seed(0)
    config = LlamaConfig(**SMALL)
    check_plain_head(LlamaForCausalLM(config), "student")  # a plain head passes
    with pytest.raises(UserError, match="post-processes its logits"):
        check_plain_head(ScaledLlama(config), "student")
    # The same architectures with their post-processing off pass.
    check_plain_head(Gemma2ForCausalLM(Gemma2Config(final_logit_softcapping=None, **SMALL)), "t")
    check_plain_head(GraniteForCausalLM(GraniteConfig(logits_scaling=1.0, **SMALL)), "t")
