"""A property-based config fuzzer: whatever a user puts in a config, loading it gives a config or one
UserError (300 examples, milliseconds each), and `foresight train` either runs or exits with code 2
and one sentence, never a traceback (40 examples, each a real 1-step run or a refusal).

Run: .venv/bin/python -m pytest tests/test_config_fuzz.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foresight.config import Config, load_config
from foresight.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# Keys a user sets, and values both plausible and hostile. Sizes that decide the run's length
# (steps, batch, tokens, eval prompts) are pinned small after the fuzzed ones, so each valid
# example is a real 1-step run of a second or two.
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "cpu", "cuda:7", "meta", "mps", "README.md", "configs", "none", "[1, 2]"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
)
KEYS = [
    "model.dtype", "model.teacher_dtype", "model.device", "model.teacher_device", "model.teacher",
    "model.chat_template", "task.name", "task.difficulty", "task.verifier", "task.too_long",
    "rollout.temperature", "rollout.group_size", "loss.kind", "loss.beta", "loss.clip_eps",
    "loss.chunk_tokens", "loss.kl_coef", "loss.teacher_topk", "optim.lr", "optim.weight_decay",
    "optim.betas", "optim.grad_clip", "optim.warmup_steps", "optim.schedule", "train.method",
    "train.sft_source", "train.micro_batches", "train.seed", "train.threads", "train.on_nonfinite",
    "train.checkpoint_at", "eval.split", "eval.sampled", "eval.teacher_kl", "effopd.enabled",
    "effopd.signal", "effopd.multipliers", "effopd.n_prompts", "lora.enabled", "lora.r",
    "unknown.key", "train.unknown",
]  # fmt: skip
KINDS = ["sampled_rkl", "reverse_kl", "forward_kl", "gjsd", "grpo", "cross_entropy"]
PINNED = [
    "train.steps=1",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=4",
    "eval.n_prompts=2",
    "effopd.n_prompts=2",
    "log.progress=false",
    "log.tensorboard=false",
]


def render(value) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


OVERRIDES = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={render(kv[1])}"),
        st.sampled_from(KINDS).map(lambda kind: f"loss.kind={kind}"),
        st.sampled_from(["opd", "rl", "sft"]).map(lambda method: f"train.method={method}"),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(overrides=OVERRIDES)
def test_any_config_loads_or_gives_one_user_error(overrides):
    try:
        cfg = load_config(REPO / "configs" / "tiny.yaml", [*overrides, *PINNED])
    except UserError as err:
        assert "\n" not in str(err) and str(err).endswith((".", ")")), str(err)
        return
    assert isinstance(cfg, Config)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every machine and run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides=OVERRIDES)
def test_any_config_runs_or_exits_2_with_one_sentence(
    overrides, monkeypatch, capsys, tmp_path_factory
):
    run = tmp_path_factory.mktemp("run") / "run"
    args = ["train", "configs/tiny.yaml", "--set", f"train.out_dir={run}"]
    for assignment in [*overrides, *PINNED]:
        args += ["--set", assignment]
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    if code == 0:
        assert (run / "checkpoints" / "step-000001").is_dir(), overrides
    else:
        assert code == 2, (overrides, err)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "Traceback" not in err, (overrides, err)
