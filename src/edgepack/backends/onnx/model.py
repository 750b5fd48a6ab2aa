"""The torch module edgepack traces to ONNX: a decoder-only LM taking past K/V and returning present K/V.

Tracing transformers' own forward records every ``view(*input_shape, -1, head_dim)`` and mask size as a chain
of Shape/Gather/Unsqueeze/Concat nodes: SmolLM2's graph had 3,315 nodes, ~2,900 per decode step, and
onnxruntime spent a third of a decode step dispatching them (single thread, measured). This module re-wires
the model's own submodules (weights shared, never copied), like ``coreml_model``, with every reshape written
with constant sizes (batch 1, ``-1`` for the one dynamic dim), so the graph carries almost no shape arithmetic:

- inputs ``input_ids`` [1, q], ``attention_mask`` [1, end] (padding; end = past + q), ``position_ids`` [1, q],
  ``past_key_values.N.key/value`` [1, kv_heads, past, head_dim]; outputs ``logits`` [1, q, vocab] (float32)
  and ``present.N.key/value`` [1, kv_heads, end, head_dim] (past + new: the onnxruntime-genai layout);
- grouped-query attention reads each K/V head once for its group of query heads (no repeat/expand);
- the causal (and sliding-window) masks are built once per call, not per layer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from edgepack.backends.layers import apply_rope, layer_windows, project_qkv, query_scale, query_scaling


class PastPresentCausalLM(nn.Module):
    """``forward(input_ids, attention_mask, position_ids, past) -> (logits, *present)`` around ``hf_model``.

    The re-wired forwards are installed on the model's own modules (causal LM, decoder, each layer, each
    attention) rather than written here, so that tracing still names every node by its module path
    (``/m/model/layers.0/self_attn/q_proj/MatMul``): the recipe's rules are matched against those names.
    """

    def __init__(self, hf_model):
        super().__init__()
        self.m = hf_model
        config = hf_model.config
        decoder = hf_model.model
        rotary = decoder.rotary_emb
        by_type = "layer_type" in inspect.signature(rotary.forward).parameters
        n = config.num_hidden_layers
        kinds = list(config.layer_types) if by_type else ["default"] * n
        # The rotated width per rope kind (< head_dim: Phi-3's partial rotary), fixed here so that tracing
        # records constant slices.
        probe, position = torch.zeros(1), torch.zeros(1, 1, dtype=torch.long)
        with torch.no_grad():
            widths = {k: rotary(*((probe, position, k) if by_type else (probe, position)))[0].shape[-1] for k in kinds}
        geometry = _Geometry(
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=decoder.layers[0].self_attn.head_dim,
            windows=layer_windows(config),
            rope_kinds=kinds,
            rope_by_type=by_type,
            rotary_dims=widths,
            attn_softcap=getattr(config, "attn_logit_softcapping", None),
            final_softcap=getattr(config, "final_logit_softcapping", None),
            query_scaling=query_scaling(config),
        )
        _install(hf_model, geometry)

    def forward(self, input_ids, attention_mask, position_ids, past):
        return self.m(input_ids, attention_mask, position_ids, past)


@dataclass(frozen=True)
class _Geometry:
    heads: int
    kv_heads: int
    head_dim: int
    windows: list  # per layer: sliding window or None
    rope_kinds: list  # per layer: the rotary table it uses
    rope_by_type: bool
    rotary_dims: dict
    attn_softcap: float | None
    final_softcap: float | None
    query_scaling: tuple[float, int] | None  # Ministral 3's Llama-4 query scaling by position


def _install(lm, g: _Geometry) -> None:
    """Replace the forwards of ``lm``'s modules (instance attributes: the classes are untouched)."""
    decoder = lm.model
    lm.forward = partial(_lm_forward, lm, g)
    decoder.forward = partial(_decoder_forward, decoder, g)
    for layer in decoder.layers:
        layer.forward = partial(_layer_forward, layer)
        layer.self_attn.forward = partial(_attention_forward, layer.self_attn, g)


def _lm_forward(lm, g, input_ids, attention_mask, position_ids, past):
    hidden, present = lm.model(input_ids, attention_mask, position_ids, past)
    logits = lm.lm_head(hidden)
    if g.final_softcap:
        logits = torch.tanh(logits / g.final_softcap) * g.final_softcap
    return (logits.float(), *present)


def _decoder_forward(decoder, g, input_ids, attention_mask, position_ids, past):
    hidden = decoder.embed_tokens(input_ids)
    masks = _masks(g, position_ids[0], attention_mask[0], hidden.dtype)
    ropes = {}
    for kind in sorted(set(g.rope_kinds)):
        args = (hidden, position_ids, kind) if g.rope_by_type else (hidden, position_ids)
        cos, sin = decoder.rotary_emb(*args)
        ropes[kind] = (cos.unsqueeze(1), sin.unsqueeze(1), g.rotary_dims[kind])  # [1, 1, q, rot]
    qscale = query_scale(position_ids[0], g.query_scaling).to(hidden.dtype) if g.query_scaling else None
    present = []
    for i, layer in enumerate(decoder.layers):
        hidden, k, v = layer(hidden, ropes[g.rope_kinds[i]], masks[g.windows[i]], past[i], qscale)
        present += [k, v]
    return decoder.norm(hidden), present


def _masks(g, positions, padding, dtype):
    """Additive [rep * q, end] masks per window (None = full): row r * q + i is query i of any head."""
    keys = torch.arange(padding.shape[0], dtype=positions.dtype)
    seen = (keys[None, :] <= positions[:, None]) & padding.bool()[None, :]
    neg = torch.finfo(dtype).min
    masks = {}
    for window in sorted(set(g.windows), key=lambda w: (w is not None, w or 0)):
        keep = seen if window is None else seen & (keys[None, :] > positions[:, None] - window)
        additive = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, neg)
        masks[window] = additive.repeat(g.heads // g.kv_heads, 1)
    return masks


def _layer_forward(layer, hidden, rope, mask, past, qscale):
    attn_out, k, v = layer.self_attn(layer.input_layernorm(hidden), rope, mask, past, qscale)
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: norms after attention and around the MLP
        hidden = hidden + layer.post_attention_layernorm(attn_out)
        return hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden))), k, v
    hidden = hidden + attn_out
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden)), k, v


def _attention_forward(attn, g, x, rope, mask, past, qscale):
    d, heads, kv = g.head_dim, g.heads, g.kv_heads
    q, k, v = project_qkv(attn, x, heads * d, kv * d)
    q = q.reshape(1, -1, heads, d).transpose(1, 2)
    k = k.reshape(1, -1, kv, d).transpose(1, 2)
    v = v.reshape(1, -1, kv, d).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, *rope, d), apply_rope(k, *rope, d)
    if qscale is not None:
        q = q * qscale
    keys = torch.cat([past[0], k], dim=2)
    values = torch.cat([past[1], v], dim=2)
    # Grouped-query attention without copying K/V: the heads of one group share a batch slot.
    scores = torch.matmul(q.reshape(1, kv, -1, d), keys.transpose(-1, -2)) * attn.scaling
    if g.attn_softcap:
        scores = torch.tanh(scores / g.attn_softcap) * g.attn_softcap
    probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, values).reshape(1, heads, -1, d).transpose(1, 2)
    return attn.o_proj(out.reshape(1, -1, heads * d)), keys, values

