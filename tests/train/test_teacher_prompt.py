"""Self-distillation: the teacher scores the student's completion after a privileged prompt.

Run: .venv/bin/python -m pytest tests/train/test_teacher_prompt.py -q
"""

from __future__ import annotations

import pytest
import torch
from builders import micro_config

from foresight.config import Config
from foresight.train.loop import make_batch, train_step
from foresight.train.rollout import encode_prompts, step_examples
from foresight.train.scoring import score_tokens, teacher_hidden_states
from foresight.train.setup import setup

TEMPLATE = "9*9=81,{prompt}"  # arith characters only, so the char tokenizer knows every one


def privileged_config(micro_pair, out_dir, template):
    return micro_config(
        *micro_pair,
        out_dir,
        task={"teacher_prompt_template": template},
        eval={"teacher_kl": False},
        loss={"kind": "reverse_kl"},
    )


def brute_force_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(v | ids[:t+1]) for every position t, one unpadded sequence: (T, V) float64."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


@torch.no_grad()
def test_teacher_logprobs_are_those_of_the_privileged_prompt_and_completion(micro_pair, tmp_path):
    cfg = privileged_config(micro_pair, tmp_path / "run", TEMPLATE)
    trainer = setup(cfg)
    student, teacher = trainer.student.double(), trainer.teacher.double()
    batch = make_batch(trainer, 1)
    rollout = batch.rollout
    hidden = teacher_hidden_states(teacher, rollout, batch.teacher_rollout)
    scores = score_tokens(student, rollout, teacher, "reverse_kl", teacher_hidden=hidden)
    prompts = [example.prompt for example in step_examples(trainer.task, cfg, 1)]
    assert len({len(p) for p in prompts}) > 1  # rows are padded differently
    width = rollout.prompt_width
    for row, (prompt, completion) in enumerate(zip(prompts, rollout.completion_ids())):
        privileged_ids = encode_prompts(trainer.tokenizer, [TEMPLATE.replace("{prompt}", prompt)])
        plain_ids = encode_prompts(trainer.tokenizer, [prompt])[0]
        teacher_logp = brute_force_logprobs(teacher, privileged_ids[0] + completion)
        student_logp = brute_force_logprobs(student, plain_ids + completion)
        start_t, start_s = len(privileged_ids[0]) - 1, len(plain_ids) - 1
        for j, token in enumerate(completion):
            p_t, p_s = teacher_logp[start_t + j], student_logp[start_s + j]  # (V,)
            got = scores.teacher_logprobs[row, width - 1 + j]
            torch.testing.assert_close(got, p_t[token], rtol=1e-10, atol=1e-10)
            reverse_kl = (p_s.exp() * (p_s - p_t)).sum()
            got_kl = scores.divergence[row, width - 1 + j]
            torch.testing.assert_close(got_kl, reverse_kl, rtol=1e-9, atol=1e-10)


def test_a_template_that_only_repeats_the_prompt_changes_nothing(micro_pair, tmp_path):
    runs = {}
    for template in (None, "{prompt}"):
        trainer = setup(privileged_config(micro_pair, tmp_path / str(template), template))
        assert (make_batch(trainer, 1).teacher_rollout is None) == (template is None)
        losses = [train_step(trainer, step)["loss"] for step in (1, 2)]
        runs[template] = losses, [p.detach().clone() for p in trainer.student.parameters()]
    assert runs[None][0] == runs["{prompt}"][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[None][1], runs["{prompt}"][1]))


def test_a_different_privileged_prompt_changes_the_loss(micro_pair, tmp_path):
    losses = []
    for template in (None, TEMPLATE):
        trainer = setup(privileged_config(micro_pair, tmp_path / str(template), template))
        losses.append(train_step(trainer, 1)["loss"])
    assert abs(losses[0] - losses[1]) > 1e-6


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"task": {"teacher_prompt_template": "no placeholder"}}, r"\{prompt\}"),
        ({"task": {"teacher_prompt_template": "{prompt}"}}, "eval.teacher_kl"),
        (
            {
                "task": {"teacher_prompt_template": "{prompt}"},
                "train": {"method": "rl"},
                "rollout": {"group_size": 2},
            },
            "train.method 'opd'",
        ),
    ],
)
def test_bad_teacher_prompt_settings_are_refused(sections, message):
    with pytest.raises(ValueError, match=message):
        Config.model_validate(sections)
