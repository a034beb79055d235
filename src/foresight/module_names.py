"""Tensor names -> (layer, module kind) for Llama, Mistral, Qwen2/3, Gemma, GPT-2 and GPT-NeoX.

Shared by the analysis (which module an update went to) and EffOPD (which tensors it extrapolates).
"""

from __future__ import annotations

import itertools
import re

from foresight.errors import UserError

ATTENTION_KINDS = frozenset({"q", "k", "v", "qkv", "o"})
MLP_KINDS = frozenset({"gate", "up", "down"})
KINDS = (
    "embedding", "q", "k", "v", "qkv", "o", "gate", "up", "down", "norm", "lm_head", "other"
)  # fmt: skip

# Leaf module name -> kind, for Llama, Mistral, Qwen2/3, Gemma (1-3) and the GPT-NeoX/GPT-2 names
# that are unambiguous on their own.
_LEAF_KINDS = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    # GPT-2's c_attn and GPT-NeoX's query_key_value hold q, k and v in one matrix. We keep the
    # fused matrix whole as kind "qkv" (counted as attention): slicing it would invent three
    # matrices the model never trained separately, and NeoX interleaves heads, so a plain split
    # would be wrong there anyway.
    "c_attn": "qkv", "query_key_value": "qkv",
    # GPT-2 c_fc and NeoX dense_h_to_4h expand hidden -> 4*hidden: the counterpart of "up" in a
    # gated MLP (there is no gate). The contracting matrices are "down".
    "c_fc": "up", "dense_h_to_4h": "up", "dense_4h_to_h": "down",
    # wpe (GPT-2 learned positions) is an embedding table too, so it joins kind "embedding".
    "embed_tokens": "embedding", "wte": "embedding", "wpe": "embedding", "embed_in": "embedding",
    "lm_head": "lm_head", "embed_out": "lm_head",
}  # fmt: skip
# Leaf names whose meaning depends on the parent module.
_PARENT_LEAF_KINDS = {
    ("attn", "c_proj"): "o", ("mlp", "c_proj"): "down", ("attention", "dense"): "o",
}  # fmt: skip
_LAYER_CONTAINERS = frozenset({"layers", "h", "layer", "blocks"})
# GPT-2 uses Conv1D, which stores weights as (in, out) instead of nn.Linear's (out, in).
CONV1D_LEAVES = frozenset({"c_attn", "c_proj", "c_fc"})


def module_of(name: str, pattern: re.Pattern[str] | None = None) -> tuple[int | None, str]:
    """(layer index or None, module kind) of a tensor name; kind is "other" when nothing matches.

    Built-in rules come first; `pattern` (named groups `layer` and `kind`) fills in what they
    leave open. Its `kind` group may capture a kind ("q") or a known leaf name ("q_proj").
    """
    parts = name.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) > 1:
        parts = parts[:-1]
    leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
    pairs = itertools.pairwise(parts)
    layer = next(
        (int(nxt) for part, nxt in pairs if part in _LAYER_CONTAINERS and nxt.isdigit()), None
    )
    kind = _LEAF_KINDS.get(leaf) or _PARENT_LEAF_KINDS.get((parent, leaf))
    if kind is None and ("norm" in leaf or leaf.startswith("ln_")):
        kind = "norm"  # input_layernorm, q_norm, pre_feedforward_layernorm, ln_1, ln_f, ...
    match = pattern.search(name) if pattern is not None else None
    if match and (kind is None or layer is None):
        layer = layer if layer is not None else _pattern_layer(match)
        kind = kind or _pattern_kind(name, match)
    return layer, kind or "other"


def _pattern_layer(match: re.Match[str]) -> int | None:
    text = match.group("layer")
    return int(text) if text and text.isdigit() else None


def _pattern_kind(name: str, match: re.Match[str]) -> str:
    captured = match.group("kind")
    kind = captured if captured in KINDS else _LEAF_KINDS.get(captured)
    if kind is None:
        raise UserError(
            f"dynamics.name_pattern captured kind '{captured}' from '{name}', which is not one "
            f"of {', '.join(KINDS)}; change the pattern's kind group to capture one of them."
        )
    return kind
