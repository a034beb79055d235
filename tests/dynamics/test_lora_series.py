"""A LoRA checkpoint read as a series: ΔW = B·A·scale equals peft's merge, and analyze reads a run."""

from __future__ import annotations

import csv
import json

import peft
import pytest
import torch
from builders import micro_config, save_micro_model
from transformers import AutoModelForCausalLM

from foresight.config_sections import DynamicsConfig
from foresight.dynamics.analysis import analyze
from foresight.dynamics.lora_series import LoraFolder, open_checkpoint
from foresight.dynamics.reading import ModelFolder
from foresight.errors import UserError
from foresight.train.loop import train

from .series import DistanceScorer


def saved_adapter(base_dir, out_dir, **lora):
    """A float64 peft model on the base with random (non-zero) A and B, saved to out_dir."""
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64)
    model = peft.get_peft_model(base, peft.LoraConfig(**lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)  # B starts at zero; the merge test needs both non-zero
    model.save_pretrained(out_dir)
    return model


@pytest.mark.parametrize(
    "lora",
    [
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        {"r": 3, "lora_alpha": 5, "use_rslora": True, "target_modules": ["o_proj", "embed_tokens"]},
    ],
    ids=["linear", "rslora-embedding"],
)
def test_delta_equals_peft_merge_minus_base_in_float64(tmp_path, lora):
    base_dir = save_micro_model(tmp_path / "base", 0)
    model = saved_adapter(base_dir, tmp_path / "adapter", **lora)
    merged = model.merge_and_unload().state_dict()  # (W + B·A·scale) in float64
    base_weights = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64).state_dict()
    folder = LoraFolder(tmp_path / "adapter", ModelFolder(base_dir))
    adapted = set(folder.factors)
    assert adapted and all(any(t in n for t in lora["target_modules"]) for n in adapted)
    for name in ModelFolder(base_dir).shapes:
        expected = merged[name] - base_weights[name]  # (m, n) float64
        delta_w = folder.delta(name)
        if name in adapted:
            assert delta_w.dtype == torch.float64
            assert float(expected.abs().max()) > 1e-3
            torch.testing.assert_close(delta_w, expected, rtol=1e-12, atol=1e-12)
            read_delta = folder.read(name) - ModelFolder(base_dir).read(name)
            torch.testing.assert_close(read_delta, expected, rtol=1e-9, atol=1e-9)
        else:
            assert delta_w is None and float(expected.abs().max()) == 0.0
            assert torch.equal(folder.read(name), ModelFolder(base_dir).read(name))


def test_open_checkpoint_tells_adapters_from_full_folders(tmp_path):
    base_dir = save_micro_model(tmp_path / "base", 0)
    saved_adapter(base_dir, tmp_path / "adapter", r=2, target_modules=["q_proj"])
    base = ModelFolder(base_dir)
    assert isinstance(open_checkpoint(tmp_path / "adapter", base), LoraFolder)
    assert isinstance(open_checkpoint(base_dir, base), ModelFolder)


def test_a_dora_adapter_is_refused(tmp_path):
    base_dir = save_micro_model(tmp_path / "base", 0)
    saved_adapter(base_dir, tmp_path / "adapter", r=2, target_modules=["q_proj"])
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["use_dora"] = True
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="use_dora"):
        LoraFolder(tmp_path / "adapter", ModelFolder(base_dir))


def test_analyze_reads_a_lora_run_as_an_update_series(micro_pair, tmp_path):
    student, teacher = micro_pair
    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "up_proj"]}
    run = train(micro_config(student, teacher, tmp_path / "run", lora=lora))
    checkpoints = [(1, run / "checkpoints/step-000001"), (2, run / "checkpoints/step-000002")]
    analyze(student, checkpoints, tmp_path / "report", DynamicsConfig(svd_solver="exact"))
    with (tmp_path / "report" / "modules.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    moved = {row["module"] for row in rows if float(row["dynamics/frobenius"]) > 0}
    assert moved == {
        f"model.layers.{layer}.{part}.weight"
        for layer in (0, 1)
        for part in ("self_attn.q_proj", "mlp.up_proj")
    }
    final = [row for row in rows if row["step"] == "2" and row["module"] in moved]
    # A rank-4 update: every singular value past the 4th is zero, so the effective rank is <= 4.
    assert all(1.0 <= float(row["dynamics/effective_rank"]) <= 4.0 + 1e-6 for row in final)


def test_probes_write_the_lora_update_that_peft_merges(micro_pair, tmp_path):
    """The scaling probe at alpha = 1 puts base + ΔW_T into the model: the merged final model."""
    from foresight.lora import load_student

    student, teacher = micro_pair
    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["v_proj", "gate_proj"]}
    cfg = micro_config(student, teacher, tmp_path / "run", lora=lora)
    run = train(cfg)
    final = run / "checkpoints/step-000002"
    load_student(cfg, final).merge_and_unload().save_pretrained(tmp_path / "merged")
    scorer = DistanceScorer(student, tmp_path / "merged")  # 0 at the base, 1 at the merged model
    dynamics = DynamicsConfig(svd_solver="exact", probes=["scaling"], scaling_alphas=[0.0, 1.0])
    summary = analyze(student, [(2, final)], tmp_path / "report", dynamics, scorer)
    gains = {row["alpha"]: row["probe/gain_recovered"] for row in summary["probes"]["scaling"]}
    assert gains[0.0] == pytest.approx(0.0, abs=1e-6)
    assert gains[1.0] == pytest.approx(1.0, abs=1e-4)
