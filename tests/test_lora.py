"""LoRA students: only adapters train, checkpoints hold the adapter, resume is exact, config checks."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from builders import micro_config
from safetensors.torch import load_file

from foresight.checkpoint import list_checkpoints
from foresight.config import Config
from foresight.errors import UserError
from foresight.lora import load_for_eval, load_student
from foresight.train.loop import train
from foresight.train.setup import setup


def lora_config(micro_pair, out_dir, **sections):
    student, teacher = micro_pair
    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "down_proj"]}
    return micro_config(student, teacher, out_dir, lora=lora, **sections)


def test_only_the_adapters_reach_the_optimizer(micro_pair, tmp_path):
    trainer = setup(lora_config(micro_pair, tmp_path / "run"))
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = [name for name, p in trainer.student.named_parameters() if id(p) in optimized]
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    # 2 layers x (q_proj, down_proj) x (A, B)
    assert len(names) == 8


def test_two_lora_steps_move_the_adapters_and_leave_the_base(micro_pair, tmp_path):
    cfg = lora_config(micro_pair, tmp_path / "run")
    run = train(cfg)
    checkpoints = list_checkpoints(run)
    assert [step for step, _ in checkpoints] == [1, 2]
    final = checkpoints[-1][1]
    assert (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()  # the base is model.student, not copied
    adapter = load_file(final / "adapter_model.safetensors")
    assert all(bool(t.any()) for k, t in adapter.items() if "lora_B" in k)  # B left zero
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
    student = load_student(cfg, final)
    base = load_student(cfg)
    merged = student.merge_and_unload()
    merged_weights, base_weights = merged.state_dict(), base.state_dict()
    for name, weight in base_weights.items():
        moved = not torch.equal(weight, merged_weights[name])
        assert moved == (("q_proj" in name or "down_proj" in name) and "weight" in name), name


def test_eval_reads_a_lora_checkpoint_through_its_run_config(micro_pair, tmp_path):
    """`foresight eval CKPT` on an adapter folder scores base + adapter, as load_student builds it."""
    cfg = lora_config(micro_pair, tmp_path / "run", rollout={"max_new_tokens": 12})
    final = list_checkpoints(train(cfg))[-1][1]
    student, tokenizer = load_for_eval(final)
    reference = load_student(cfg, final)
    for (name, weight), (_, expected) in zip(
        student.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(weight, expected), name
    assert tokenizer.get_vocab() == load_for_eval(cfg.model.student)[1].get_vocab()
    (final / "config.yaml").unlink()
    with pytest.raises(UserError, match="base is unknown"):
        load_for_eval(final)


def test_lora_resume_gives_the_uninterrupted_adapter_bit_for_bit(micro_pair, tmp_path):
    whole = train(lora_config(micro_pair, tmp_path / "whole", train={"steps": 4}))
    part = lora_config(micro_pair, tmp_path / "part", train={"steps": 2})
    train(part)
    resumed = train(lora_config(micro_pair, tmp_path / "part", train={"steps": 4}), resume=True)
    final_whole = load_file(list_checkpoints(whole)[-1][1] / "adapter_model.safetensors")
    final_resumed = load_file(list_checkpoints(resumed)[-1][1] / "adapter_model.safetensors")
    assert final_whole.keys() == final_resumed.keys()
    for key, tensor in final_whole.items():
        assert torch.equal(tensor, final_resumed[key]), key


def test_lora_targets_the_student_lacks_are_refused(micro_pair, tmp_path):
    cfg = lora_config(micro_pair, tmp_path / "run")
    cfg = cfg.model_copy(
        update={"lora": cfg.lora.model_copy(update={"target_modules": ["c_attn"]})}
    )
    with pytest.raises(UserError, match="lora.target_modules"):
        setup(cfg)


def test_lora_with_effopd_is_refused():
    with pytest.raises(ValueError, match="lora.enabled"):
        Config.model_validate({"lora": {"enabled": True}, "effopd": {"enabled": True}})


@pytest.mark.slow
def test_smollm2_lora_student_trains_and_analyze_reads_its_update_series(smollm2_dir, tmp_path):
    """The real-model path end to end: imported SmolLM2-135M-Instruct as teacher and as the base
    of a LoRA student, two OPD steps on the CPU (privileged teacher prompt), checkpoints, and
    `foresight analyze RUN` reading the merged LoRA updates."""
    from typer.testing import CliRunner

    from foresight.cli import app
    from foresight.demo_real import write_prompts

    run = tmp_path / "run"
    cfg = Config.model_validate(
        {
            "model": {"student": str(smollm2_dir), "teacher": str(smollm2_dir)},
            "task": {
                "name": "jsonl",
                "path": str(write_prompts(tmp_path / "prompts.jsonl")),
                "verifier": "python:foresight.demo_real:starts_with_greeting",
                "teacher_prompt_template": "{prompt} Begin your reply with 'Hello!'",
            },
            "rollout": {"prompts_per_step": 2, "max_new_tokens": 4},
            "loss": {"kind": "reverse_kl"},
            "optim": {"lr": 1e-3},
            "lora": {"enabled": True, "r": 2, "target_modules": ["q_proj", "down_proj"]},
            "train": {"steps": 2, "out_dir": str(run), "checkpoint_every": 1, "threads": 1},
            "eval": {"every": 100, "n_prompts": 2, "sampled": False, "teacher_kl": False},
            "log": {"tensorboard": False, "progress": False},
        }
    )
    train(cfg)
    assert [step for step, _ in list_checkpoints(run)] == [1, 2]
    report = tmp_path / "report"
    result = CliRunner().invoke(app, ["analyze", str(run), "--out", str(report)])
    assert result.exit_code == 0, result.output
    with (report / "modules.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["step"] == "2"]
    frobenius = {row["module"]: float(row["dynamics/frobenius"]) for row in rows}
    targeted = {name for name in frobenius if "q_proj" in name or "down_proj" in name}
    assert len(targeted) == 2 * 30  # every layer of the 30-layer model
    assert all(frobenius[name] > 0 for name in targeted)
    assert all(value == 0.0 for name, value in frobenius.items() if name not in targeted)
