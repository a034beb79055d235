""".venv/bin/python -m pytest tests/effopd/test_callback.py -q

EffOPD as a plug-in of TRL's on-policy `DistillationTrainer` (reverse KL, student-generated
completions): the callback searches after the optimizer step at the pow2 trigger steps, writes the
kept weights into the very model the trainer optimizes, and accepts an extrapolation when the
validation signal (minus the reverse KL to the teacher) does not drop. Offline, CPU, a few steps on
the micro models. trl and datasets come with the test extra.
"""

from __future__ import annotations

import datasets
import pytest
import torch
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from foresight.config import EffOPDConfig
from foresight.effopd.extrapolate import extrapolated_names, snapshot
from foresight.effopd.search import EffOPD, EffOPDCallback, is_search_step
from foresight.tasks import TASKS
from foresight.train.evaluate import effopd_validator

STEPS = 4  # searches at 1, 2, 4
# Adam at 1e-3 makes small, consistent steps on the micro student, so going further along Δ lowers
# the KL to the teacher (clear margins, ~1e-2 per candidate); at 1e-2 the steps overshoot and
# every candidate is rejected.
LEARNING_RATE = 1e-3
MAX_NEW_TOKENS = 12


class WeightProbe(TrainerCallback):
    """Snapshots EffOPD's tensors at the trigger steps; put one before and one after the EffOPD
    callback (callbacks run in list order) to see W_t and the anchor before the search and the
    weights it kept."""

    def __init__(self, effopd: EffOPD) -> None:
        self.effopd = effopd
        self.seen: dict[int, dict[str, dict[str, torch.Tensor]]] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if is_search_step(self.effopd.cfg, state.global_step):
            anchor = {name: tensor.clone() for name, tensor in self.effopd.anchor.items()}
            weights = snapshot(self.effopd.params)
            self.seen[state.global_step] = {"weights": weights, "anchor": anchor}
        return control


def load_pair(micro_pair):
    student_dir, teacher_dir = micro_pair
    tokenizer = AutoTokenizer.from_pretrained(student_dir, local_files_only=True)
    student, teacher = (
        AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        for folder in (student_dir, teacher_dir)
    )
    return tokenizer, student, teacher


@pytest.mark.slow
# TRL defaults gradient_checkpointing to True, which transformers 5 renamed: deprecation noise only.
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
def test_effopd_callback_accepts_inside_trl_distillation_trainer(micro_pair, tmp_path):
    # Offline by construction: models, tokenizer and dataset are handed to TRL as objects.
    tokenizer, student, teacher = load_pair(micro_pair)
    task = TASKS["arith"](None)

    # Standard (non-conversational) prompts: the char tokenizer has no chat template, and TRL then
    # tokenizes the raw text. BOS is written into the text, as foresight's own rollouts prepend it.
    train_dataset = datasets.Dataset.from_list(
        [{"prompt": tokenizer.bos_token + e.prompt} for e in task.sample("train", 16, 0)]
    )

    cfg = EffOPDConfig(
        enabled=True,
        schedule="pow2",
        signal="kl",
        multipliers=[0.5, 1.0, 2.0],
        accept="ge",
        n_prompts=12,
    )
    validator = effopd_validator(
        "kl",
        task,
        tokenizer,
        task.sample("train", cfg.n_prompts, 1),
        MAX_NEW_TOKENS,
        seed=0,
        student=student,  # the very model TRL trains: each search samples from its W_t
        teacher=teacher,
    )
    effopd = EffOPD(cfg, student, extrapolated_names(student, cfg.modules), validator)
    before, after = WeightProbe(effopd), WeightProbe(effopd)

    initial_student = {n: p.detach().clone() for n, p in student.named_parameters()}
    initial_teacher = {n: p.detach().clone() for n, p in teacher.named_parameters()}

    args = trl.DistillationConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=STEPS,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=MAX_NEW_TOKENS,
        learning_rate=LEARNING_RATE,
        # beta=1: reverse KL. TRL 1.x's DistillationTrainer has no lmbda: always fully on-policy.
        lr_scheduler_type="constant",
        beta=1.0,
        temperature=1.0,
        disable_dropout=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = trl.DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[before, EffOPDCallback(effopd), after],
    )
    trainer.train()

    # The optimizer updated the very tensors EffOPD extrapolates (no copy in between).
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert effopd.params and {id(p) for p in effopd.params.values()} <= optimized

    assert trainer.state.global_step == STEPS
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))

    # Searched exactly at the trigger steps that happened, once each.
    triggers = [s for s in range(1, STEPS + 1) if is_search_step(cfg, s)]
    assert triggers == [1, 2, 4]
    assert [record["step"] for record in effopd.history] == triggers
    assert sorted(before.seen) == sorted(after.seen) == triggers

    # At least one search accepted, each on a real gain in the signal (with the KL signal a tie
    # would mean Δ = 0, i.e. a search that did nothing).
    accepted = [record for record in effopd.history if record["accepted"]]
    assert accepted, f"no search accepted: {effopd.history}"
    for record in accepted:
        assert record["accepted"] in cfg.multipliers
        assert record["best_score"] == record["scores"][record["accepted"]]
        assert record["best_score"] > record["initial_score"]

    # The kept weights were written into the live model: W_t + m·Δ when accepted, W_t bit for bit
    # when not; the anchor then moved to them.
    for record in effopd.history:
        seen_before, seen_after = before.seen[record["step"]], after.seen[record["step"]]
        m = record["accepted"]
        for name, w_t in seen_before["weights"].items():
            kept = seen_after["weights"][name]
            if m:
                expected = w_t + m * (w_t - seen_before["anchor"][name])
                torch.testing.assert_close(kept, expected, rtol=0, atol=1e-6)
                assert not torch.equal(kept, w_t)
            else:
                assert torch.equal(kept, w_t)
            assert torch.equal(seen_after["anchor"][name], kept)

    # Training moved the student (the extrapolated tensors included); the teacher is untouched.
    moved = [
        name
        for name, param in student.named_parameters()
        if not torch.equal(param.detach(), initial_student[name])
    ]
    assert set(effopd.params) <= set(moved)
    for name, param in teacher.named_parameters():
        assert torch.equal(param.detach(), initial_teacher[name])
