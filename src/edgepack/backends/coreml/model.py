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

import torch
from torch import nn

from edgepack.backends.layers import apply_rope, layer_windows, project_qkv, query_scale, query_scaling, rope_tables

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


def sliding_mask(start, end, window: int):
    """Additive [q, end] mask hiding keys at or before ``query - window`` (transformers' convention)."""
    q_pos = torch.arange(start, end, dtype=torch.int32).unsqueeze(-1)
    k_pos = torch.arange(0, end, dtype=torch.int32).unsqueeze(0)
    too_old = (k_pos <= q_pos - window).to(torch.float32)
    return too_old * NEG
