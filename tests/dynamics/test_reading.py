"""Tensor-name mapping per architecture, folder reading, and the series checks' errors.

.venv/bin/python -m pytest tests/dynamics -q
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from foresight.dynamics.reading import (
    ModelFolder,
    check_series,
    checkpoints_of,
    describe,
    module_of,
    step_of,
)
from foresight.errors import UserError

NAMES = {
    "llama": {
        "model.embed_tokens.weight": (None, "embedding"),
        "model.layers.3.self_attn.q_proj.weight": (3, "q"),
        "model.layers.3.self_attn.k_proj.weight": (3, "k"),
        "model.layers.3.self_attn.v_proj.weight": (3, "v"),
        "model.layers.3.self_attn.o_proj.weight": (3, "o"),
        "model.layers.12.mlp.gate_proj.weight": (12, "gate"),
        "model.layers.12.mlp.up_proj.weight": (12, "up"),
        "model.layers.12.mlp.down_proj.weight": (12, "down"),
        "model.layers.0.input_layernorm.weight": (0, "norm"),
        "model.layers.0.post_attention_layernorm.weight": (0, "norm"),
        "model.norm.weight": (None, "norm"),
        "lm_head.weight": (None, "lm_head"),
    },
    "qwen3": {
        "model.layers.5.self_attn.q_norm.weight": (5, "norm"),
        "model.layers.5.self_attn.k_norm.weight": (5, "norm"),
        "model.layers.5.self_attn.q_proj.bias": (5, "q"),  # Qwen2 biases
    },
    "gemma": {
        "model.layers.2.pre_feedforward_layernorm.weight": (2, "norm"),
        "model.layers.2.post_feedforward_layernorm.weight": (2, "norm"),
        "language_model.model.layers.7.mlp.down_proj.weight": (7, "down"),  # Gemma 3 wrapper
    },
    "gpt2": {
        "transformer.wte.weight": (None, "embedding"),
        "transformer.wpe.weight": (None, "embedding"),
        "transformer.h.4.attn.c_attn.weight": (4, "qkv"),
        "transformer.h.4.attn.c_attn.bias": (4, "qkv"),
        "transformer.h.4.attn.c_proj.weight": (4, "o"),
        "transformer.h.4.mlp.c_fc.weight": (4, "up"),
        "transformer.h.4.mlp.c_proj.weight": (4, "down"),
        "transformer.h.4.ln_1.weight": (4, "norm"),
        "transformer.ln_f.bias": (None, "norm"),
    },
    "gpt_neox": {
        "gpt_neox.embed_in.weight": (None, "embedding"),
        "gpt_neox.layers.1.attention.query_key_value.weight": (1, "qkv"),
        "gpt_neox.layers.1.attention.dense.weight": (1, "o"),
        "gpt_neox.layers.1.mlp.dense_h_to_4h.weight": (1, "up"),
        "gpt_neox.layers.1.mlp.dense_4h_to_h.weight": (1, "down"),
        "gpt_neox.layers.1.input_layernorm.weight": (1, "norm"),
        "gpt_neox.final_layer_norm.weight": (None, "norm"),
        "embed_out.weight": (None, "lm_head"),
    },
}


@pytest.mark.parametrize("architecture", NAMES)
def test_names_map_to_layer_and_kind(architecture):
    for name, expected in NAMES[architecture].items():
        assert module_of(name) == expected, name


def test_user_pattern_is_the_fallback():
    pattern = re.compile(r"blk(?P<layer>\d+)\.(?P<kind>wq|q_proj|ffn_up)")
    assert module_of("blk7.wq.weight") == (None, "other")  # no pattern: unmapped
    assert module_of("blk7.q_proj.weight", pattern) == (7, "q")  # built-in rules come first
    with pytest.raises(UserError, match="name_pattern captured kind 'wq'"):
        module_of("blk7.wq.weight", pattern)
    kinds = re.compile(r"blk(?P<layer>\d+)\.(?P<kind>up)_w")
    assert module_of("blk2.up_w.weight", kinds) == (2, "up")


def write_folder(folder, tensors, shards=1):
    """A safetensors folder, sharded round-robin over `shards` files with an index."""
    folder.mkdir(parents=True)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return folder
    names = list(tensors)
    weight_map = {}
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[index::shards]}
        save_file(part, folder / file)
        weight_map |= dict.fromkeys(part, file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def small_model(scale=0.0):
    torch.manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(10, 4) + scale,
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4) + scale,
        "model.layers.0.input_layernorm.weight": torch.ones(4) + scale,
        "model.norm.weight": torch.ones(4),
    }


def test_sharded_and_single_folders_read_the_same(tmp_path):
    single = ModelFolder(write_folder(tmp_path / "single", small_model()))
    sharded = ModelFolder(write_folder(tmp_path / "sharded", small_model(), shards=2))
    assert len(set(sharded.files.values())) == 2
    assert single.shapes == sharded.shapes
    for name in single.shapes:
        assert torch.equal(single.read(name), sharded.read(name))
    bf16 = write_folder(tmp_path / "bf16", {"w": torch.ones(2, 2, dtype=torch.bfloat16)})
    assert ModelFolder(bf16).read("w").dtype == torch.float32


def test_describe_orders_embedding_layers_then_final_tensors(tmp_path):
    folder = ModelFolder(write_folder(tmp_path / "m", small_model()))
    infos = describe(folder)
    assert [info.kind for info in infos] == ["embedding", "q", "norm", "norm"]
    assert [info.layer for info in infos] == [None, 0, 0, None]
    assert infos[1].is_matrix and not infos[0].is_matrix  # embeddings are not attn/MLP


def test_series_errors_name_the_tensors(tmp_path):
    base = ModelFolder(write_folder(tmp_path / "base", small_model()))
    missing = small_model()
    del missing["model.layers.0.self_attn.q_proj.weight"]
    reshaped = small_model()
    reshaped["model.embed_tokens.weight"] = torch.zeros(12, 4)
    extra = {**small_model(), "model.extra.weight": torch.zeros(1)}
    cases = {
        "missing": (missing, "lacks 1 tensor.*q_proj"),
        "reshaped": (reshaped, r"embed_tokens.weight \[12, 4\] vs base \[10, 4\]"),
        "extra": (extra, "model.extra.weight"),
    }
    for name, (tensors, message) in cases.items():
        folder = ModelFolder(write_folder(tmp_path / name, tensors))
        with pytest.raises(UserError, match=message):
            check_series(base, [folder])
    check_series(base, [ModelFolder(write_folder(tmp_path / "ok", small_model(1.0)))])


def test_bad_folders_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ModelFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*.safetensors"):
        ModelFolder(tmp_path / "empty")
    nan = ModelFolder(write_folder(tmp_path / "nan", {"w": torch.tensor([1.0, float("nan")])}))
    with pytest.raises(UserError, match="NaN or inf"):
        nan.read("w")


def test_checkpoints_of_skips_partial_writes(tmp_path):
    for name in ("step-000020", "step-000005", "step-000010.tmp-123", "step-12", "notes"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-000030").touch()  # a file, not a folder
    assert checkpoints_of(tmp_path) == [
        (5, tmp_path / "checkpoints" / "step-000005"),
        (20, tmp_path / "checkpoints" / "step-000020"),
    ]
    with pytest.raises(UserError, match="no checkpoints/ folder"):
        checkpoints_of(tmp_path / "checkpoints")


def test_step_of_reads_trailing_digits(tmp_path):
    for name in ("step-000120", "checkpoint-500", "final"):
        (tmp_path / name).mkdir()
    assert step_of(tmp_path / "step-000120") == 120
    assert step_of(tmp_path / "checkpoint-500") == 500
    with pytest.raises(UserError, match="Cannot tell the step"):
        step_of(tmp_path / "final")
