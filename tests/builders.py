"""Builders shared by the tests: micro model folders made from config (no downloads), tiny configs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from foresight.config import Config
from foresight.models import build_char_tokenizer
from foresight.tasks import TASKS

MICRO = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
)

# A smaller shape for tests that build models in memory from a config (vocabulary of 32 ids).
NANO = dict(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
)


def save_micro_model(
    folder: Path, seed: int, alphabet: str | None = None, sharpen: float = 1.0
) -> Path:
    """A ~20k-parameter Qwen3 model with the arith char tokenizer, saved as an HF folder.

    `sharpen` scales the LM head: a random model is near-uniform, so a sharpened teacher makes the KL
    to it clearly non-zero (a test with KL ~ 0 would pass on noise)."""
    tokenizer = build_char_tokenizer(alphabet or TASKS["arith"](None).alphabet)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **MICRO,
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def micro_config(student: Path, teacher: Path, out_dir: Path, **sections: dict) -> Config:
    """A 2-step OPD config on the micro models; sections override keys per section."""
    raw = {
        "model": {"student": str(student), "teacher": str(teacher)},
        "task": {"name": "arith"},
        "rollout": {"prompts_per_step": 8, "max_new_tokens": 12},
        "optim": {"lr": 1e-2},
        "train": {"steps": 2, "out_dir": str(out_dir), "checkpoint_every": 1},
        "eval": {"every": 100, "n_prompts": 8, "batch_size": 8},
        "log": {"tensorboard": False, "progress": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return Config.model_validate(raw)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`foresight ARGS` in this process: (exit code, stdout, stderr)."""
    import sys

    from foresight.cli import main

    monkeypatch.setattr(sys, "argv", ["foresight", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
