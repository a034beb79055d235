"""Config loading: every YAML in configs/ validates; overrides are typed; unknown keys are errors.

Run: .venv/bin/python -m pytest tests/test_config.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from foresight.compare.plan import load_plan
from foresight.config import load_config
from foresight.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_says_how_to_run_it(path):
    if "\ncompare:" in path.read_text():
        load_plan(path)  # a compare config: shared sections plus `compare:`, one Config per run
    else:
        load_config(path)
    assert path.read_text().startswith("#") and "Run: " in path.read_text()


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config(None, ["optim.lr=1e-4", "train.steps=7", "log.tensorboard=false"])
    assert cfg.optim.lr == 1e-4 and cfg.train.steps == 7 and cfg.log.tensorboard is False
    with pytest.raises(UserError, match="unknown key 'optim.lrr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(UserError, match="has no '='"):
        load_config(None, ["optim.lr"])
    with pytest.raises(UserError, match="'rollout.temperature' is invalid"):
        load_config(None, ["rollout.temperature=0"])


def test_cross_section_checks_name_the_keys():
    with pytest.raises(
        UserError, match="train.micro_batches cannot exceed rollout.prompts_per_step"
    ):
        load_config(None, ["train.micro_batches=100"])
    with pytest.raises(UserError, match="effopd.signal 'kl' needs a teacher"):
        load_config(None, ["effopd.enabled=true", "effopd.signal=kl", "train.method=sft"])


def test_an_unset_loss_kind_is_the_methods_default_and_is_saved():
    """loss.kind left out means the method's default (the first of config.LOSS_KINDS), filled in
    at validation so that the saved config names it."""
    from foresight.config import config_to_yaml
    from foresight.config_sections import LOSS_KINDS

    for method, default in (("opd", "sampled_rkl"), ("rl", "grpo"), ("sft", "cross_entropy")):
        assert LOSS_KINDS[method][0] == default
        group = ["rollout.group_size=2"] if method == "rl" else []  # GRPO needs a group
        cfg = load_config(None, [f"train.method={method}", *group])
        assert cfg.loss.kind == default
        assert f"kind: {default}" in config_to_yaml(cfg)
