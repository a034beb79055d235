"""A lean decoder for sampling: the model's own weights and modules, fused projections, and a KV
cache allocated once per rollout.

Generation runs one forward pass per token. For the small models this toolkit trains on a CPU, the
library's generic forward is mostly per-call work (mask building, cache bookkeeping, one matmul per
projection, a copy of the whole cache per token); the arithmetic of a decode step is a small part of
it. This decoder computes the same function with fewer, larger operations: Q, K and V in one matmul,
gate and up in one, keys and values written in place. It reuses the model's RMSNorm and rotary
modules, so their numerics are the model's. `supports(model)` names the decoders it implements
(Qwen2, Qwen3, Llama such as SmolLM2, also with plain LoRA adapters, whose B·A is added to the
fused weights once per rollout); anything else samples through the library's forward instead.
tests/opd/test_sampling_exact.py checks both paths against a brute-force reference.

On a CPU, the one-token passes of a float32 model (computing in float32 or bfloat16) go through a
compiled step instead (decode_step.cpp via fused.py): the same arithmetic, all layers in one call,
with the operations between the matrix products as loops over the rows instead of ~50 PyTorch calls
per layer. tests/opd/test_decode_step.py checks it against this module's Python step and a float64
forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from foresight.opd.fused import COLUMN_BLOCK, decode_step, layer_ops

SUPPORTED = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
# Rotary kinds whose cos and sin at a position do not depend on the sequence's length.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA student), else the model itself."""
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def _plain_lora(module: torch.nn.Module) -> bool:
    """A LoRA layer whose output is exactly (W + (alpha/R)·B·A) x: one active, unmerged adapter
    on a plain Linear, no dropout, no DoRA magnitude."""
    if not isinstance(module, peft.tuners.lora.Linear) or module.disable_adapters:
        return False
    adapters = module.active_adapters
    return (
        len(adapters) == 1
        and not module.merged
        and type(module.get_base_layer()) is torch.nn.Linear
        and type(module.lora_dropout[adapters[0]]) is torch.nn.Identity
        and not module.use_dora.get(adapters[0], False)
    )


def _weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight a projection applies: a Linear's, or a plain LoRA layer's W + (alpha/R)·B·A."""
    if type(module) is torch.nn.Linear:
        return module.weight
    delta = module.get_delta_weight(module.active_adapters[0])
    return module.get_base_layer().weight + delta


def _bias(module: torch.nn.Module) -> torch.Tensor | None:
    return module.bias if type(module) is torch.nn.Linear else module.get_base_layer().bias


def supports(model: torch.nn.Module) -> bool:
    """Whether `model` is a plain decoder this module implements exactly (LoRA adapters included:
    their B·A is merged into the fused weights once per rollout)."""
    model = unwrapped(model)
    if type(model).__name__ not in SUPPORTED:
        return False
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    projections = [
        getattr(owner, name)
        for layer in model.model.layers
        for owner, names in (
            (layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (layer.mlp, ("gate_proj", "up_proj", "down_proj")),
        )
        for name in names
    ]
    projections.append(model.get_output_embeddings())
    return (
        all(type(module) is torch.nn.Linear or _plain_lora(module) for module in projections)
        and type(model.model.embed_tokens) is torch.nn.Embedding
        and config.hidden_act == "silu"
        and not getattr(config, "mlp_bias", False)
        and set(layer_types) == {"full_attention"}
        and getattr(model, "hf_device_map", None) is None  # no offloading hooks
    )


@dataclass
class _Layer:
    input_norm: torch.nn.Module
    qkv_weight: torch.Tensor  # (q + 2·kv, H)
    qkv_bias: torch.Tensor | None
    # Qwen3 normalizes each head's query and key: their RMSNorm weights stacked per head
    # (heads + kv heads, head dim), so queries and keys are normalized in one pass.
    qk_norm_weight: torch.Tensor | None
    qk_norm_eps: float
    o_weight: torch.Tensor  # (H, q)
    o_bias: torch.Tensor | None
    post_norm: torch.nn.Module
    gate_up_weight: torch.Tensor  # (2·I, H)
    down_weight: torch.Tensor  # (H, I)


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to(dtype)


def _fuse(model: PreTrainedModel, dtype: torch.dtype, heads: int, kv_heads: int) -> list[_Layer]:
    layers = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        biases = [_bias(p) for p in projections]
        q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        qk_norm_weight, eps = None, 0.0
        if q_norm is not None:
            head_dim = q_norm.weight.shape[0]
            qk_norm_weight = torch.cat(
                [q_norm.weight.expand(heads, head_dim), k_norm.weight.expand(kv_heads, head_dim)]
            ).detach()
            eps = q_norm.variance_epsilon
        layers.append(
            _Layer(
                layer.input_layernorm,
                _cast(torch.cat([_weight(p) for p in projections]), dtype),
                None if biases[0] is None else _cast(torch.cat(biases), dtype),
                qk_norm_weight,
                eps,
                _cast(_weight(attention.o_proj), dtype),
                _cast(_bias(attention.o_proj), dtype),
                layer.post_attention_layernorm,
                _cast(torch.cat([_weight(mlp.gate_proj), _weight(mlp.up_proj)]), dtype),
                _cast(_weight(mlp.down_proj), dtype),
            )
        )
    return layers


def _head_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3's per-head RMSNorm, operation for operation (float32 inside, as the library's)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LeanDecoder:
    """Incremental forward passes of one batch; the cache holds `capacity` columns per row."""

    def __init__(
        self, model: PreTrainedModel, batch: int, capacity: int, compiled: bool = True
    ) -> None:
        model = unwrapped(model)
        config = model.config
        device = model.device
        # Under bfloat16 autocast (model.dtype=bfloat16) the matmuls run in bfloat16, as in the
        # student's training forward: the weights are cast once here, each input once per matmul,
        # and everything else (norms, rotary, attention, the residual stream) stays in the model's
        # dtype, as the update's float32 attention does (attention.py). Doing the casts here,
        # with autocast off, skips autocast's per-call dispatch, which made bfloat16 sampling
        # slower than float32 on a CPU.
        self.compute_dtype = (
            torch.get_autocast_dtype(device.type)
            if torch.is_autocast_enabled(device.type)
            else model.dtype
        )
        dtype = self.compute_dtype
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.model = model
        self.layers = _fuse(model, dtype, self.heads, self.kv_heads)
        head = model.get_output_embeddings()
        self.head_weight, self.head_bias = _cast(_weight(head), dtype), _cast(_bias(head), dtype)
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        # One-token steps through the compiled step (decode_step.cpp) where it applies and unless
        # `compiled` is off: a float32 model on a CPU, computing in float32 or bfloat16.
        self.compiled_step = (
            decode_step()
            if compiled
            and device.type == "cpu"
            and model.dtype == torch.float32
            and dtype in (torch.float32, torch.bfloat16)
            else None
        )
        if self.compiled_step is not None:  # its score loop reads whole blocks of columns
            capacity = -(-capacity // COLUMN_BLOCK) * COLUMN_BLOCK
        # Keys are stored transposed, (B, kv heads, head dim, P + G): one token's scores are then a
        # product against a contiguous (head dim, columns) matrix, and the compiled step's loops run
        # along the columns. Values are (B, kv heads, P + G, head dim).
        key_shape = (batch, self.kv_heads, self.head_dim, capacity)
        value_shape = (batch, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.zeros(key_shape, dtype=model.dtype, device=device) for _ in self.layers]
        self.values = [
            torch.zeros(value_shape, dtype=model.dtype, device=device) for _ in self.layers
        ]
        self.length = 0  # columns filled
        if self.compiled_step is not None:
            self.cache_rows = torch.arange(batch, device=device)  # (b,) each row's cache row
            self.selected = False  # whether cache_rows is no longer every row in order
            # The model's rotary cos and sin at every position the cache can hold, computed once by
            # its own module, for rotary kinds whose frequencies do not depend on the sequence's
            # length (dynamic and longrope rescale with it: those compute them per token).
            self.cos_table = self.sin_table = None
            if getattr(model.model.rotary_emb, "rope_type", None) in STATIC_ROPE:
                positions = torch.arange(capacity, device=device)[None]  # (1, C)
                probe = torch.zeros(1, dtype=model.dtype, device=device)
                cos, sin = model.model.rotary_emb(probe, positions)  # (1, C, head dim)
                self.cos_table, self.sin_table = cos[0].contiguous(), sin[0].contiguous()
            self.flat_weights = [
                tensor if tensor is not None else torch.empty(0)
                for layer in self.layers
                for tensor in (
                    layer.input_norm.weight.detach(),
                    layer.qkv_weight,
                    layer.qkv_bias,
                    layer.qk_norm_weight,
                    layer.o_weight,
                    layer.o_bias,
                    layer.post_norm.weight.detach(),
                    layer.gate_up_weight,
                    layer.down_weight,
                )
            ]

    def _linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x @ weight.T (+ bias) in the compute dtype; the result stays in it."""
        return F.linear(x.to(self.compute_dtype), weight, bias)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (rows that stopped leave it). The compiled step reads the
        cache through a row map instead of copying it."""
        if self.length == 0:
            raise RuntimeError("LeanDecoder.select: nothing is cached yet")
        if self.compiled_step is not None:
            self.cache_rows = self.cache_rows[rows]
            self.selected = True
            return
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    def next_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Logits (b, V) after the last of `input_ids` (b, t); `attention_mask` (b, length + t)
        marks the real columns of the cache and of the new tokens."""
        with torch.autocast(input_ids.device.type, enabled=False):  # casts are explicit here
            return self._next_logits(input_ids, attention_mask, position_ids)

    def _next_logits(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        start, new = self.length, input_ids.shape[1]
        end = start + new
        if end > self.values[0].shape[2]:
            raise RuntimeError(f"LeanDecoder: {end} columns do not fit the cache's capacity")
        if self.compiled_step is not None:
            if new == 1:
                return self._compiled_next_logits(input_ids, attention_mask, position_ids)
            if self.selected:  # the Python step reads the cache row by row, without the row map
                raise RuntimeError("LeanDecoder: several tokens at once after rows left")
        mask = self._mask(attention_mask, start, end)
        hidden = self.model.model.embed_tokens(input_ids)  # (b, t, H)
        cos, sin = self.model.model.rotary_emb(hidden, position_ids)  # (b, t, head dim)
        cos, sin = cos[:, None], sin[:, None]
        for index, layer in enumerate(self.layers):
            hidden = hidden + self._attention(index, layer, hidden, cos, sin, mask, start, end)
            gate, up = self._linear(layer.post_norm(hidden), layer.gate_up_weight).chunk(2, dim=-1)
            hidden = hidden + self._linear(F.silu(gate) * up, layer.down_weight)
        self.length = end
        last = self.model.model.norm(hidden[:, -1])  # (b, H)
        return self._linear(last, self.head_weight, self.head_bias)  # (b, V)

    def _compiled_next_logits(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        decoder = self.model.model
        hidden = F.embedding(input_ids[:, 0], decoder.embed_tokens.weight)  # (b, H)
        if self.cos_table is not None:
            position = position_ids[:, 0]  # (b,)
            cos, sin = self.cos_table[position], self.sin_table[position]  # (b, head dim)
        else:
            cos, sin = decoder.rotary_emb(hidden, position_ids)  # (b, 1, head dim)
            cos, sin = cos[:, 0].contiguous(), sin[:, 0].contiguous()
        first = self.layers[0]
        logits = self.compiled_step(
            hidden,
            cos,
            sin,
            attention_mask.long().contiguous(),
            self.length,
            self.cache_rows,
            self.flat_weights,
            self.keys,
            self.values,
            decoder.norm.weight.detach(),
            self.head_weight,
            self.head_bias,
            self.heads,
            self.kv_heads,
            first.input_norm.variance_epsilon,
            first.qk_norm_eps,
        )
        self.length += 1
        return logits

    def _mask(self, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Which cache columns each new token attends to, shared by every layer: a boolean
        (b, t, C) for the prompt's SDPA call; an additive float (b·kv heads, 1, C), 0 or -inf,
        for one token, whose scores take it in the same call that scales them."""
        capacity = self.keys[0].shape[3]
        columns = torch.arange(capacity, device=attention_mask.device)  # (C,)
        query_columns = columns[start:end, None]  # (t, 1)
        real = F.pad(attention_mask.bool(), (0, capacity - end))  # (b, C): unwritten columns off
        # Real keys up to each query; each query also sees itself, so a padding query's attention
        # is finite (its output is never read by a real token).
        allowed = (real[:, None, :] & (columns <= query_columns)) | (
            columns == query_columns
        )  # (b, t, C)
        if end - start > 1:
            return allowed
        bias = torch.zeros(allowed.shape, dtype=self.keys[0].dtype, device=allowed.device)
        bias = bias.masked_fill_(~allowed, float("-inf"))  # (b, 1, C)
        return bias.repeat_interleave(self.kv_heads, dim=0)  # row i·kv + j: row i's kv head j

    def _attention(self, index, layer, hidden, cos, sin, mask, start, end) -> torch.Tensor:
        batch, new = hidden.shape[:2]
        qkv = self._linear(layer.input_norm(hidden), layer.qkv_weight, layer.qkv_bias)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        # Queries and keys are adjacent heads of the fused projection: normalized (Qwen3) and
        # rotated together, then split.
        query_key = qkv[..., : q_size + kv_size].view(batch, new, -1, self.head_dim)
        if layer.qk_norm_weight is not None:
            query_key = _head_norm(query_key, layer.qk_norm_weight, layer.qk_norm_eps)
        dtype = self.keys[index].dtype  # attention runs in the model's dtype
        query_key = _rotate(query_key.transpose(1, 2).to(dtype), cos, sin)  # (b, h + kv, t, d)
        query, key = query_key.split([self.heads, self.kv_heads], dim=1)
        value = qkv[..., q_size + kv_size :].view(batch, new, self.kv_heads, self.head_dim)
        value = value.transpose(1, 2)  # (b, kv heads, t, head dim)
        self.keys[index][:, :, :, start:end] = key.transpose(2, 3)
        self.values[index][:, :, start:end] = value
        # Attend over the whole (contiguous) buffer: columns not yet written are masked out, and
        # reading them costs less than a strided slice of the cache at every token (measured).
        keys, values = self.keys[index], self.values[index]
        # The prompt (a first pass, keys only its own): attention.cpp, where it is built.
        first_pass = new > 1 and start == 0 and dtype in (torch.float32, torch.float64)
        compiled = layer_ops() if first_pass else None
        if compiled is not None:
            attended, _ = compiled.attention_forward(
                query,
                key,
                value.to(dtype),
                mask[:, None, :, :end].contiguous(),
                self.head_dim**-0.5,
            )  # (b, t, heads, head dim)
            return self._linear(attended.reshape(batch, new, q_size), layer.o_weight, layer.o_bias)
        if new > 1:  # a later multi-token pass: one call, the fused kernel
            attended = F.scaled_dot_product_attention(
                query,
                keys.transpose(2, 3),
                values,
                attn_mask=mask[:, None],
                enable_gqa=self.kv_heads != self.heads,
            )  # (b, heads, t, head dim)
        else:  # one token: two small batched matmuls beat the blocked kernel's set-up per call
            # Query head h reads kv head h // groups: the heads of one kv head form one matrix.
            flat = (batch * self.kv_heads, -1, self.head_dim)  # (b·kv heads, ·, head dim)
            grouped, values = query.reshape(flat), values.view(flat)
            keys = keys.view(batch * self.kv_heads, self.head_dim, -1)  # (b·kv heads, d, C)
            scores = torch.baddbmm(
                mask, grouped, keys, alpha=self.head_dim**-0.5
            )  # (b·kv heads, groups, C): the scaled scores plus the additive mask, in one call
            attended = torch.bmm(torch.softmax(scores, dim=-1), values).view(query.shape)
        attended = attended.transpose(1, 2).reshape(batch, new, q_size)
        return self._linear(attended, layer.o_weight, layer.o_bias)
