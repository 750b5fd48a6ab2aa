"""The torch module edgepack converts to Core ML: a decoder-only LM with a stateful KV cache.

transformers' own forward does not convert (its mask code emits ``aten::diff``/``new_ones``, its static cache
``index_copy``), so this module re-wires the model's own submodules (projections, norms, MLPs, embeddings:
their weights are shared, never copied) around a cache Core ML can hold as state:

- inputs ``inputIds`` [1, q] and ``causalMask`` [1, 1, q, end] (additive; q and end flexible, so one model
  serves chunked prefill and single-token decode). The chunk starts at ``end - q``: the names and shapes are
  the ones swift-transformers looks for.
- states ``keyCache``/``valueCache`` [layers, kv_heads, cache_len, width]: Core ML states must be fp16 and
  the Neural Engine wants state dimensions in multiples of 32 (coremltools#2631), so cache_len and width are
  rounded up to 32 and the unused columns stay zero. With fp32 compute each value is stored as an fp16 pair
  (hi, lo = x - hi): the cache then keeps ~22 bits of mantissa, so fp32 exports match eager to float error.
- sliding-window layers mask keys older than the window themselves (the caller's mask is plain causal).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

NEG = torch.finfo(torch.float16).min  # a mask value that survives fp16 compute


def round_up(n: int, multiple: int = 32) -> int:
    return -(-n // multiple) * multiple


class StatefulCausalLM(nn.Module):
    def __init__(self, hf_model, max_seq_len: int, *, precise_cache: bool):
        super().__init__()
        config = hf_model.config
        self.model = hf_model.model  # keeps the checkpoint's parameter names (model.layers.0...)
        self.lm_head = hf_model.lm_head
        attn = self.model.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.precise_cache = precise_cache
        self.final_softcap = getattr(config, "final_logit_softcapping", None)
        self.attn_softcap = getattr(config, "attn_logit_softcapping", None)
        self.windows = layer_windows(config)
        self.cache_len = round_up(max_seq_len)
        self.cache_width = round_up(self.head_dim * (2 if precise_cache else 1))
        shape = (config.num_hidden_layers, self.num_kv_heads, self.cache_len, self.cache_width)
        self.register_buffer("keyCache", torch.zeros(shape, dtype=torch.float16))
        self.register_buffer("valueCache", torch.zeros(shape, dtype=torch.float16))
        tables, self.layer_rope = rope_tables(hf_model, self.cache_len)
        self.rotary_dim = next(iter(tables.values()))[0].shape[-1]  # < head_dim: partial rotary (Phi-3)
        for kind, (cos, sin) in tables.items():
            self.register_buffer(f"rope_cos_{kind}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{kind}", sin, persistent=False)
        self.query_scaling = query_scaling(config)
        if self.query_scaling:  # a table like the rope's: the program only slices it
            positions = torch.arange(self.cache_len)
            self.register_buffer("query_scale", query_scale(positions, self.query_scaling), persistent=False)

    def forward(self, inputIds: torch.Tensor, causalMask: torch.Tensor) -> torch.Tensor:
        q_len, end = inputIds.shape[-1], causalMask.shape[-1]
        start = end - q_len
        hidden = self.model.embed_tokens(inputIds)
        qscale = self.query_scale[start:end] if self.query_scaling else None
        window_masks = {}
        for i, layer in enumerate(self.model.layers):
            window = self.windows[i]
            if window and window not in window_masks:
                window_masks[window] = causalMask + sliding_mask(start, end, window)
            mask = window_masks[window] if window else causalMask
            kind = self.layer_rope[i]
            rope = (
                getattr(self, f"rope_cos_{kind}")[start:end],
                getattr(self, f"rope_sin_{kind}")[start:end],
            )
            hidden = self._layer(i, layer, hidden, rope, mask, start, end, qscale)
        logits = self.lm_head(self.model.norm(hidden))
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def _layer(self, i, layer, hidden, rope, mask, start, end, qscale):
        gemma_style = hasattr(layer, "pre_feedforward_layernorm")
        attn_out = self._attention(i, layer.self_attn, layer.input_layernorm(hidden), rope, mask, start, end, qscale)
        if gemma_style:
            hidden = hidden + layer.post_attention_layernorm(attn_out)
            mlp_out = layer.mlp(layer.pre_feedforward_layernorm(hidden))
            return hidden + layer.post_feedforward_layernorm(mlp_out)
        hidden = hidden + attn_out
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _attention(self, i, attn, x, rope, mask, start, end, qscale):
        q_len, d, kv, rep = x.shape[1], self.head_dim, self.num_kv_heads, self.num_heads // self.num_kv_heads
        q, k, v = project_qkv(attn, x, self.num_heads * d, kv * d)
        q = q.view(1, q_len, self.num_heads, d).transpose(1, 2)
        k = k.view(1, q_len, kv, d).transpose(1, 2)
        v = v.view(1, q_len, kv, d).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rope(q, *rope, self.rotary_dim, d), apply_rope(k, *rope, self.rotary_dim, d)
        if qscale is not None:
            q = q * qscale
        keys = self._update(self.keyCache, i, k, start, end)
        values = self._update(self.valueCache, i, v, start, end)
        # Grouped-query attention without copying K/V: heads of one group share a batch slot.
        q = q.reshape(1, kv, rep * q_len, d)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * attn.scaling
        if self.attn_softcap:
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        scores = scores.view(1, kv, rep, q_len, end) + mask.unsqueeze(1)
        probs = torch.softmax(scores, dim=-1).view(1, kv, rep * q_len, end)
        out = torch.matmul(probs, values).view(1, self.num_heads, q_len, d)
        return attn.o_proj(out.transpose(1, 2).reshape(1, q_len, self.num_heads * d))

    def _update(self, cache, i, new, start, end):
        """Write this chunk's K or V into layer ``i`` of the cache, return the layer's first ``end`` rows."""
        d = self.head_dim
        if self.precise_cache:
            hi = new.to(torch.float16).to(torch.float32)
            parts = [hi, new - hi]
        else:
            parts = [new]
        pad = self.cache_width - d * len(parts)
        if pad:
            parts.append(torch.zeros(1, new.shape[1], new.shape[2], pad, dtype=new.dtype))
        cache[i : i + 1, :, start:end, :] = torch.cat(parts, dim=-1).to(cache.dtype)
        rows = cache[i : i + 1, :, :end, :].to(torch.float32)
        if self.precise_cache:
            return rows[..., :d] + rows[..., d : 2 * d]
        return rows[..., :d]


def project_qkv(attn, x, q_size, kv_size):
    if hasattr(attn, "qkv_proj"):  # Phi-3 fuses the three projections
        qkv = attn.qkv_proj(x)
        return qkv[..., :q_size], qkv[..., q_size : q_size + kv_size], qkv[..., q_size + kv_size :]
    return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


def apply_rope(x, cos, sin, rot: int, head_dim: int):
    """Rotary embedding on the first ``rot`` of ``head_dim`` dims. The sizes are Python ints, so tracing records
    constant slices (the ONNX graph gets no Shape arithmetic for them)."""
    half = rot // 2
    x_rot = x[..., :rot] if rot < head_dim else x
    out = x_rot * cos + torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1) * sin
    return torch.cat((out, x[..., rot:]), dim=-1) if rot < head_dim else out


def query_scaling(config) -> tuple[float, int] | None:
    """Ministral 3's Llama-4 query scaling as (beta, original_max_position_embeddings), or None."""
    rope = getattr(config, "rope_parameters", None) or {}
    beta = rope.get("llama_4_scaling_beta")
    return (float(beta), int(rope["original_max_position_embeddings"])) if beta else None


def query_scale(positions: torch.Tensor, scaling: tuple[float, int]) -> torch.Tensor:
    """[n, 1] multipliers of the (rotated) queries at ``positions``: 1 + beta * log(1 + floor(p / original)),
    so attention sharpens a little every ``original`` positions (transformers' ``get_llama_4_attn_scale``)."""
    beta, original = scaling
    return (1 + beta * torch.log(1 + torch.floor(positions / original)))[:, None]


def sliding_mask(start, end, window: int):
    """Additive [q, end] mask hiding keys at or before ``query - window`` (transformers' convention)."""
    q_pos = torch.arange(start, end, dtype=torch.int32).unsqueeze(-1)
    k_pos = torch.arange(0, end, dtype=torch.int32).unsqueeze(0)
    too_old = (k_pos <= q_pos - window).to(torch.float32)
    return too_old * NEG


def layer_windows(config) -> list[int | None]:
    """The attention window of each layer (None = full attention)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    n = config.num_hidden_layers
    if not window:
        return [None] * n
    if types is None:
        return [window] * n
    return [window if t == "sliding_attention" else None for t in types]


def rope_tables(hf_model, length: int):
    """cos/sin [length, rot] per rope kind, computed once by the model's own rotary module, and each layer's
    kind (Gemma 3 gives local and global layers different bases)."""
    rotary = hf_model.model.rotary_emb
    probe = torch.zeros(1, dtype=torch.float32)
    positions = torch.arange(length).unsqueeze(0)
    n = hf_model.config.num_hidden_layers
    per_type = "layer_type" in inspect.signature(rotary.forward).parameters
    kinds = list(hf_model.config.layer_types) if per_type else ["default"] * n
    tables = {}
    with torch.no_grad():
        for kind in sorted(set(kinds)):
            cos, sin = rotary(probe, positions, kind) if per_type else rotary(probe, positions)
            tables[kind] = (cos[0].float().contiguous(), sin[0].float().contiguous())
    return tables, kinds
