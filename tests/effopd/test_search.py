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
from foresight.config_sections import EffOPDConfig
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
    straight = EffOPDConfig(schedule="straight", every=5)  # checks; each may search
    assert [s for s in range(1, 16) if is_search_step(straight, s)] == [5, 10, 15]
    for cfg in (
        pow2,
        every,
        straight,
    ):  # the next trigger after each step, against a search forward
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


@pytest.mark.parametrize(
    "rule, scores, accepted",
    [
        ("ge", [0.5, 0.53125, 0.75], 0.0),  # +1/32 is under the minimum effect: nothing accepted
        ("ge", [0.5, 0.5625, 0.625, 0.65625], 4.0),  # +1/16 twice, then +1/32 stops the search
        ("gt", [0.5, 0.5625, 0.75], 0.0),  # strict: exactly the minimum is not enough
    ],
)
def test_a_candidate_must_beat_the_best_score_by_min_gain(rule, scores, accepted):
    model, anchor = moved_model()
    # min_gain and the scores are multiples of 1/32, exact in binary, so that each sum and
    # difference here is exact and the boundary cases test the rule, not rounding.
    cfg = EffOPDConfig(accept=rule, min_gain=0.0625)
    effopd = effopd_of(model, scripted_validator(scores), cfg)
    effopd.anchor = anchor
    assert effopd.on_step_end(1, model)["effopd/accepted_multiplier"] == accepted


def walk(effopd: EffOPD, directions: list[dict[str, torch.Tensor]], model) -> list[dict]:
    """Move the selected weights by directions[i] before step i + 1, calling the hook after each."""
    stats = []
    for step, direction in enumerate(directions, start=1):
        with torch.no_grad():
            for name, param in effopd.params.items():
                param.add_(direction[name])
        stats.append(effopd.on_step_end(step, model))
    return stats


def test_straight_schedule_searches_only_when_the_last_two_segments_agree():
    model = tiny("qwen3")
    cfg = EffOPDConfig(schedule="straight", every=2, min_cosine=0.5, multipliers=[1.0])
    effopd = effopd_of(model, scripted_validator([0.5, 0.6]), cfg)  # always accepts m = 1
    names = list(effopd.params)
    generator = torch.Generator().manual_seed(0)
    fixed = {n: 1e-3 * torch.randn(p.shape, generator=generator) for n, p in effopd.params.items()}
    turn = {n: 1e-3 * torch.randn(p.shape, generator=generator) for n, p in effopd.params.items()}
    half = {n: 0.5 * fixed[n] + turn[n] for n in names}  # a segment that turns away from `fixed`
    before = snapshot(effopd.params)
    stats = walk(effopd, [fixed, fixed, fixed, fixed, half, half], model)
    # Step 2: the first check, with nothing to compare: no search, the anchor moves to W_2.
    assert stats[1] == {}
    # Step 4: segment 2·fixed against segment 2·fixed: cosine 1, so it searched and accepted m = 1.
    assert stats[3]["effopd/segment_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert stats[3]["effopd/accepted_multiplier"] == 1.0
    # Step 6: segment (fixed + 2·turn) against 2·fixed; the cosine is the float64 brute force of the
    # two flat vectors, and it is under 0.5, so no search ran.
    a = torch.cat([(fixed[n] + 2 * turn[n]).double().flatten() for n in names])
    b = torch.cat([(2 * fixed[n]).double().flatten() for n in names])
    expected = float(a @ b / (a.norm() * b.norm()))
    # The segment is read back from float32 weights: each entry carries about 1e-7 relative
    # rounding of |W| ~ 0.02 against steps ~ 1e-3, so the cosine agrees to about 1e-4.
    assert stats[5] == {"effopd/segment_cosine": pytest.approx(expected, abs=1e-4)}
    assert expected < 0.5 and len(effopd.history) == 1
    # The weights: 4 fixed steps, then the accepted jump of m = 1 (another 2·fixed), then 2 half.
    for name, param in effopd.params.items():
        moved = 6 * fixed[name] + 2 * half[name]
        torch.testing.assert_close(param.detach(), before[name] + moved, rtol=0, atol=1e-6)


def test_average_direction_extrapolates_along_the_recent_steps_at_the_length_of_delta():
    model = tiny("qwen3")
    beta = 0.5
    cfg = EffOPDConfig(schedule="every", every=3, direction="average", average_beta=beta)
    cfg = cfg.model_copy(update={"multipliers": [2.0]})
    effopd = effopd_of(model, scripted_validator([0.5, 0.6]), cfg)  # accepts m = 2
    names = list(effopd.params)
    generator = torch.Generator().manual_seed(1)
    steps = [
        {n: 1e-3 * torch.randn(p.shape, generator=generator) for n, p in effopd.params.items()}
        for _ in range(3)
    ]
    start = {n: t.double() for n, t in snapshot(effopd.params).items()}
    stats = walk(effopd, steps, model)
    assert stats[0] == {} and stats[1] == {}
    # The float64 brute force: the weights after each step, their average from the anchor W_0
    # (a_i = beta·a_{i-1} + (1 - beta)·W_i), d = W_3 − a_3, and Δ = W_3 − W_0.
    weights, average = dict(start), dict(start)
    for step in steps:
        weights = {n: weights[n] + step[n].double() for n in names}
        average = {n: beta * average[n] + (1 - beta) * weights[n] for n in names}

    def flat(tensors):
        return torch.cat([tensors[n].flatten() for n in names])

    recent = flat(weights) - flat(average)
    delta = flat(weights) - flat(start)
    expected = flat(weights) + 2.0 * delta.norm() * recent / recent.norm()
    got = torch.cat([effopd.params[n].detach().double().flatten() for n in names])
    # Each float32 weight (|W| ~ 0.02) and average carries about 1e-9 absolute rounding per
    # operation; against jumps of ~1e-3 per entry, 1e-7 absolute is far above rounding and far
    # below any error in the direction or its length.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    cos = float(recent @ delta / (recent.norm() * delta.norm()))
    assert stats[2]["effopd/direction_cosine"] == pytest.approx(cos, abs=1e-5)
    assert cos < 0.99  # three random steps: the recent direction is not Δ's
    # The anchor and the average both restart at the kept weights.
    for name, param in effopd.params.items():
        assert torch.equal(effopd.anchor[name], param.detach())
        assert torch.equal(effopd.average[name], param.detach())


def test_a_saved_state_of_another_direction_is_refused():
    model = tiny("qwen3")
    plain = effopd_of(model, scripted_validator([]))
    average = effopd_of(model, scripted_validator([]), EffOPDConfig(direction="average"))
    with pytest.raises(UserError, match="effopd.direction 'average'"):
        average.load_state_dict(plain.state_dict())
    with pytest.raises(UserError, match="effopd.direction 'anchor'"):
        plain.load_state_dict(average.state_dict())


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


@pytest.mark.parametrize(
    "schedule",
    [
        {},
        # Checks every step and always searches after the first (the segment is in the state).
        {"schedule": "straight", "every": 1, "min_cosine": -1.0},
        # The weight average since the anchor, updated every step, comes from the checkpoint.
        {"direction": "average", "average_beta": 0.5},
    ],
)
def test_anchor_is_checkpointed_and_a_resumed_run_matches_an_uninterrupted_one(
    micro_pair, tmp_path, schedule
):
    effopd = {
        "enabled": True,
        "signal": "kl",
        "n_prompts": 8,
        "multipliers": [1.0, 2.0],
        **schedule,
    }
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
    straight = schedule.get("schedule") == "straight"
    assert sorted(effopd_rows(tmp_path / "full")) == ([2, 3, 4] if straight else [1, 2, 4])
    # The step-4 search read the straight segment or the weight average from the checkpoint.
    kept = {"previous": straight, "average": schedule.get("direction") == "average"}
    for key, is_kept in kept.items():
        assert (key in state["effopd"]) == is_kept
        if is_kept:
            assert set(state["effopd"][key]) == set(state["effopd"]["anchor"])
    expected = load_file(tmp_path / "full" / "checkpoints" / "step-000004" / "model.safetensors")
    got = load_file(tmp_path / "split" / "checkpoints" / "step-000004" / "model.safetensors")
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def tiny_like(folder):
    return load_model(folder, "student")
