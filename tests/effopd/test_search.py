"""EffOPD: trigger schedule, candidate arithmetic, exact undo, module filter, acceptance rules,
anchor save/restore across resume.

Run: .venv/bin/python -m pytest tests/effopd -q
"""

from __future__ import annotations

import pytest
import torch
from builders import NANO, micro_config
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from foresight.checkpoint import load_trainer_state
from foresight.config import EffOPDConfig
from foresight.effopd.extrapolate import extrapolated_names, snapshot
from foresight.effopd.search import EffOPD, is_search_step, next_search_step
from foresight.errors import UserError
from foresight.log import read_metrics
from foresight.models import load_model
from foresight.train.loop import train


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**NANO))
    return Qwen3ForCausalLM(Qwen3Config(**NANO))


def selected_parameters(model: torch.nn.Module, kinds: list[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters `extrapolated_names` picks, by name."""
    params = dict(model.named_parameters())
    return {name: params[name] for name in extrapolated_names(model, kinds)}


def effopd_of(model: torch.nn.Module, validator, cfg: EffOPDConfig | None = None) -> EffOPD:
    cfg = cfg or EffOPDConfig()
    return EffOPD(cfg, model, extrapolated_names(model, cfg.modules), validator)


def scripted_validator(scores: list[float]):
    """A validator returning scores[i] on its i-th call in each search (index 0 = W_t)."""

    def begin(step):
        calls = iter(scores)
        return lambda candidate: next(calls)

    return begin


def test_trigger_schedules():
    pow2 = EffOPDConfig()
    assert [s for s in range(1, 40) if is_search_step(pow2, s)] == [1, 2, 4, 8, 16, 32]
    every = EffOPDConfig(schedule="every", every=5)
    assert [s for s in range(1, 16) if is_search_step(every, s)] == [5, 10, 15]
    for cfg in (pow2, every):  # the next trigger after each step, against a search forward
        for step in range(40):
            expected = next(s for s in range(step + 1, 100) if is_search_step(cfg, s))
            assert next_search_step(cfg, step) == expected


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_module_filter_takes_attention_and_mlp_weights_only(family):
    names = sorted(extrapolated_names(tiny(family), EffOPDConfig().modules))
    leaves = {n.split(".")[-2] for n in names}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(names) == 7 * NANO["num_hidden_layers"]
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in names)


def test_modules_that_select_no_weight_are_refused():
    model = tiny("qwen3")
    cfg = EffOPDConfig(modules=["qkv"])  # GPT-2's fused kind: Qwen3 has separate q, k and v
    assert extrapolated_names(model, cfg.modules) == []
    with pytest.raises(UserError, match="select no 2-D weight"):
        effopd_of(model, scripted_validator([]), cfg)


def moved_model(step_size: float = 0.01):
    """A model plus its initial weights, after a fake 'optimizer step' on every selected tensor."""
    model = tiny("qwen3")
    effopd_cfg = EffOPDConfig()
    anchor = snapshot(selected_parameters(model, effopd_cfg.modules))
    with torch.no_grad():
        for param in selected_parameters(model, effopd_cfg.modules).values():
            param.add_(step_size * torch.randn_like(param))
    return model, anchor


@pytest.mark.parametrize("accepted_count", [0, 1, 2, 5])
def test_after_k_acceptances_weights_are_anchor_plus_2k_plus_1_delta(accepted_count):
    model, anchor = moved_model()
    scores = [0.5 + 0.1 * i for i in range(accepted_count + 1)] + [
        0.0
    ] * 6  # rises k times, then drops
    effopd = effopd_of(model, scripted_validator(scores))
    assert effopd.params.keys() == selected_parameters(model, EffOPDConfig().modules).keys()
    effopd.anchor = {n: t.clone() for n, t in anchor.items()}
    current = snapshot(effopd.params)
    stats = effopd.on_step_end(1, model)
    k = accepted_count
    assert stats["effopd/accepted_multiplier"] == 2 * k
    for name, param in effopd.params.items():
        expected = anchor[name] + (2 * k + 1) * (current[name] - anchor[name])
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(
            effopd.anchor[name], param.detach()
        )  # the anchor moves to the kept weights
    if k == 0:
        for name, param in effopd.params.items():
            assert torch.equal(
                param.detach(), current[name]
            )  # rejected candidates undone bit for bit


def test_rejection_after_acceptance_restores_the_accepted_weights_exactly():
    model, anchor = moved_model()
    effopd = effopd_of(model, scripted_validator([0.5, 0.6, 0.1]))
    effopd.anchor = anchor
    current = snapshot(effopd.params)
    effopd.on_step_end(2, model)
    for name, param in effopd.params.items():
        w_t = current[name]
        assert torch.equal(param.detach(), w_t + 2.0 * (w_t - anchor[name]))


@pytest.mark.parametrize("rule, accepted", [("ge", 4.0), ("gt", 0.0)])
def test_acceptance_rules_on_a_tie(rule, accepted):
    model, anchor = moved_model()
    effopd = effopd_of(model, scripted_validator([0.5, 0.5, 0.5, 0.4]), EffOPDConfig(accept=rule))
    effopd.anchor = anchor
    assert effopd.on_step_end(4, model)["effopd/accepted_multiplier"] == accepted


def test_non_trigger_steps_do_nothing():
    model, _ = moved_model()
    effopd = effopd_of(model, scripted_validator([]))
    assert effopd.on_step_end(3, model) == {} and effopd.history == []


def effopd_rows(run_dir):
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith("effopd/")}
        for r in read_metrics(run_dir)
        if "effopd/delta_norm" in r
    }


def test_anchor_is_checkpointed_and_a_resumed_run_matches_an_uninterrupted_one(
    micro_pair, tmp_path
):
    effopd = {"enabled": True, "signal": "kl", "n_prompts": 8, "multipliers": [1.0, 2.0]}
    train(micro_config(*micro_pair, tmp_path / "full", train={"steps": 4}, effopd=effopd))
    train(micro_config(*micro_pair, tmp_path / "split", train={"steps": 3}, effopd=effopd))
    state = load_trainer_state(tmp_path / "split" / "checkpoints" / "step-000003")
    assert set(state["effopd"]["anchor"]) == set(
        extrapolated_names(tiny_like(micro_pair[0]), EffOPDConfig().modules)
    )
    train(
        micro_config(*micro_pair, tmp_path / "split", train={"steps": 4}, effopd=effopd),
        resume=True,
    )
    # ‖W_4 − anchor‖ at the step-4 search depends on the anchor restored from the checkpoint.
    assert effopd_rows(tmp_path / "split") == effopd_rows(tmp_path / "full")
    assert sorted(effopd_rows(tmp_path / "full")) == [1, 2, 4]
    expected = load_file(tmp_path / "full" / "checkpoints" / "step-000004" / "model.safetensors")
    got = load_file(tmp_path / "split" / "checkpoints" / "step-000004" / "model.safetensors")
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def tiny_like(folder):
    return load_model(folder, "student")
