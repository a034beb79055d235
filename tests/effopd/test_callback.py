""".venv/bin/python -m pytest tests/effopd/test_callback.py -q

EffOPD as a plug-in of TRL's on-policy `DistillationTrainer` (reverse KL, student-generated
completions): the callback searches after the optimizer step at the pow2 trigger steps, writes the
kept weights into the very model the trainer optimizes, and accepts an extrapolation when the
validation signal (minus the reverse KL to the teacher) does not drop; it saves its state into the
trainer's checkpoints, and a resumed run searches exactly as an uninterrupted one. Offline, CPU, a
few steps on the micro models. trl and datasets come with the test extra.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import datasets
import pytest
import torch
import trl
from builders import NANO
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
    TrainerCallback,
)

from foresight.config_sections import EffOPDConfig
from foresight.effopd.callback import EffOPDCallback, load_state, save_state
from foresight.effopd.extrapolate import extrapolated_names, snapshot
from foresight.effopd.search import EffOPD, is_search_step
from foresight.effopd.validators import kl_validator, prompts_with_bos
from foresight.errors import UserError
from foresight.tasks import TASKS

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


EFFOPD = EffOPDConfig(
    enabled=True,
    schedule="pow2",
    signal="kl",
    multipliers=[0.5, 1.0, 2.0],
    accept="ge",
    n_prompts=12,
)


@dataclass
class Run:
    """Fresh copies of the micro models, the prompts and an EffOPD object (KL signal)."""

    tokenizer: PreTrainedTokenizerBase
    student: torch.nn.Module
    teacher: torch.nn.Module
    effopd: EffOPD
    dataset: datasets.Dataset


def fresh_run(micro_pair) -> Run:
    """Offline by construction: models, tokenizer and dataset are handed to TRL as objects."""
    tokenizer, student, teacher = load_pair(micro_pair)
    task = TASKS["arith"](None)
    # Standard (non-conversational) prompts: the char tokenizer has no chat template, and TRL then
    # tokenizes the raw text, with no BOS for this tokenizer: prompts_with_bos writes it in, as
    # foresight's own rollouts (and the validator) prepend it. 32 prompts: one epoch of 8 steps.
    prompts = prompts_with_bos(tokenizer, [e.prompt for e in task.sample("train", 32, 0)])
    assert all(p.startswith(tokenizer.bos_token) for p in prompts)
    validator = kl_validator(
        [e.prompt for e in task.sample("train", EFFOPD.n_prompts, 1)],
        teacher,
        student,  # the very model TRL trains: each search samples from its W_t
        tokenizer,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
    )
    effopd = EffOPD(EFFOPD, student, extrapolated_names(student, EFFOPD.modules), validator)
    dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts])
    return Run(tokenizer, student, teacher, effopd, dataset)


def distillation_trainer(run: Run, out_dir, max_steps, callbacks, save_steps=None):
    args = trl.DistillationConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no" if save_steps is None else "steps",
        save_steps=save_steps or 500,
        logging_steps=1,
        max_steps=max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=MAX_NEW_TOKENS,
        learning_rate=LEARNING_RATE,
        # beta=1: reverse KL. TRL 1.x's DistillationTrainer has no lmbda: always fully on-policy.
        lr_scheduler_type="constant",  # max_steps changes at resume; the lr must not depend on it
        beta=1.0,
        temperature=1.0,
        disable_dropout=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return trl.DistillationTrainer(
        model=run.student,
        teacher_model=run.teacher,
        args=args,
        train_dataset=run.dataset,
        processing_class=run.tokenizer,
        callbacks=callbacks,
    )


@pytest.mark.slow
# TRL defaults gradient_checkpointing to True, which transformers 5 renamed: deprecation noise only.
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
def test_effopd_callback_accepts_inside_trl_distillation_trainer(micro_pair, tmp_path):
    run = fresh_run(micro_pair)
    effopd, student, teacher, cfg = run.effopd, run.student, run.teacher, run.effopd.cfg
    before, after = WeightProbe(effopd), WeightProbe(effopd)
    trainer = distillation_trainer(
        run, tmp_path / "out", STEPS, [before, EffOPDCallback(effopd), after]
    )
    initial_student = {n: p.detach().clone() for n, p in student.named_parameters()}
    initial_teacher = {n: p.detach().clone() for n, p in teacher.named_parameters()}
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


def searches(effopd: EffOPD) -> list[dict]:
    """The search history without its timings."""
    return [{k: v for k, v in record.items() if k != "seconds"} for record in effopd.history]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
def test_a_resumed_trl_run_searches_exactly_as_an_uninterrupted_one(micro_pair, tmp_path):
    """5 steps straight vs 3 steps, then a resume from checkpoint-3 to step 5 with fresh objects
    (models at their initial weights, a new EffOPD whose anchor is those weights): the search at
    step 4 spans W_4 − anchor, so it matches only if the anchor of step 2's search came back.

    On CPU with one thread the run is deterministic: the trainer restores its own RNG state, data
    order and optimizer, and the search draws from seeds made of (seed, step) under a forked RNG,
    so everything is compared exactly."""
    straight = fresh_run(micro_pair)
    callbacks = [EffOPDCallback(straight.effopd)]
    distillation_trainer(straight, tmp_path / "straight", 5, callbacks, save_steps=3).train()

    first = fresh_run(micro_pair)
    callbacks = [EffOPDCallback(first.effopd)]
    distillation_trainer(first, tmp_path / "split", 3, callbacks, save_steps=3).train()
    saved = json.loads((tmp_path / "split" / "checkpoint-3" / "effopd_state.json").read_text())
    assert saved["step"] == 3 and saved["next_search_step"] == 4
    assert [record["step"] for record in saved["history"]] == [1, 2]

    resumed = fresh_run(micro_pair)
    trainer = distillation_trainer(
        resumed, tmp_path / "split", 5, [EffOPDCallback(resumed.effopd)], save_steps=3
    )
    trainer.train(resume_from_checkpoint=True)

    assert [record["step"] for record in straight.effopd.history] == [1, 2, 4]
    assert searches(resumed.effopd) == searches(straight.effopd)
    assert resumed.effopd.anchor.keys() == straight.effopd.anchor.keys()
    for name, tensor in straight.effopd.anchor.items():
        assert torch.equal(resumed.effopd.anchor[name], tensor), name
    resumed_weights = dict(resumed.student.named_parameters())
    for name, param in straight.student.named_parameters():
        assert torch.equal(resumed_weights[name], param), name

    # The searches' metrics joined the log lines of their steps, in the resumed run's history too
    # (the lines of steps 1 and 2 came back with trainer_state.json).
    def effopd_logs(history):
        return {
            log["step"]: {k: v for k, v in log.items() if k.startswith("effopd/")}
            for log in history
            if "loss" in log and "effopd/accepted_multiplier" in log
        }

    straight_history = json.loads(
        (tmp_path / "straight" / "checkpoint-5" / "trainer_state.json").read_text()
    )["log_history"]
    assert sorted(effopd_logs(straight_history)) == [1, 2, 4]
    assert effopd_logs(trainer.state.log_history) == effopd_logs(straight_history)

    # The callback reads its state under args.output_dir: a resume from a checkpoint elsewhere
    # is refused (the trainer does not say where it resumed from), and so is a checkpoint
    # without the callback's state (saved by a run without it).
    checkpoint = tmp_path / "split" / "checkpoint-3"
    elsewhere = shutil.copytree(checkpoint, tmp_path / "copied" / "checkpoint-3")
    refused = fresh_run(micro_pair)
    callbacks = [EffOPDCallback(refused.effopd)]
    trainer = distillation_trainer(refused, tmp_path / "other", 5, callbacks, save_steps=3)
    with pytest.raises(UserError, match="from a checkpoint other than"):
        trainer.train(resume_from_checkpoint=str(elsewhere))
    (checkpoint / "effopd_state.json").unlink()
    refused = fresh_run(micro_pair)
    callbacks = [EffOPDCallback(refused.effopd)]
    trainer = distillation_trainer(refused, tmp_path / "split", 5, callbacks, save_steps=3)
    with pytest.raises(UserError, match="holds no EffOPD state"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def searched_effopd(cfg: EffOPDConfig = EFFOPD) -> EffOPD:
    """An EffOPD on a tiny random model after one search (scripted scores: m = 0.5 accepted)."""
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**NANO))

    def validator(step):
        scores = iter([0.1, 0.2, 0.15])
        return lambda candidate: next(scores)

    effopd = EffOPD(cfg, model, extrapolated_names(model, cfg.modules), validator)
    with torch.no_grad():
        for param in effopd.params.values():
            param.add_(0.01)
    effopd.on_step_end(2, model)
    return effopd


def test_saved_state_round_trips_and_refuses_what_does_not_belong(tmp_path):
    effopd = searched_effopd()
    save_state(tmp_path, 3, effopd, {"effopd/accepted_multiplier": 0.5})
    assert not list(tmp_path.glob(".*partial"))  # renamed into place
    fresh = searched_effopd()
    fresh.anchor = {name: torch.zeros_like(t) for name, t in fresh.anchor.items()}
    fresh.history = []
    assert load_state(tmp_path, 3, fresh) == {"effopd/accepted_multiplier": 0.5}
    assert fresh.history == effopd.history  # the multipliers are floats again
    assert all(torch.equal(fresh.anchor[n], t) for n, t in effopd.anchor.items())
    assert fresh.previous is None  # none saved: the pow2 schedule keeps no segment

    # The 'straight' schedule's last segment travels in the same file and comes back by name.
    effopd.previous = {name: tensor + 1 for name, tensor in effopd.anchor.items()}
    save_state(tmp_path, 3, effopd, {})
    load_state(tmp_path, 3, fresh)
    assert fresh.previous.keys() == effopd.previous.keys()
    assert all(torch.equal(fresh.previous[n], t) for n, t in effopd.previous.items())
    assert all(torch.equal(fresh.anchor[n], t) for n, t in effopd.anchor.items())

    # So does the 'average' direction's weight average, under its own prefix.
    averaged = searched_effopd(EFFOPD.model_copy(update={"direction": "average"}))
    averaged.average = {name: tensor - 1 for name, tensor in averaged.anchor.items()}
    (tmp_path / "average").mkdir()
    save_state(tmp_path / "average", 3, averaged, {})
    fresh_average = searched_effopd(averaged.cfg)
    load_state(tmp_path / "average", 3, fresh_average)
    assert all(torch.equal(fresh_average.average[n], t) for n, t in averaged.average.items())
    assert all(torch.equal(fresh_average.anchor[n], t) for n, t in averaged.anchor.items())

    with pytest.raises(UserError, match="does not belong"):
        load_state(tmp_path, 4, fresh)  # another step
    changed = EFFOPD.model_copy(update={"multipliers": [1.0]})
    with pytest.raises(UserError, match="same EffOPDConfig"):
        load_state(tmp_path, 3, searched_effopd(changed))
    anchor_file = tmp_path / "effopd_anchor.safetensors"
    anchor_file.write_bytes(anchor_file.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="does not belong"):
        load_state(tmp_path, 3, fresh)
