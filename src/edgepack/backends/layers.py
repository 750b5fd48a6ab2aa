"""Torch building blocks the backends' model wrappers share: they re-wire a transformers model's own submodules
around each runtime's cache, and compute attention the same way the model does."""

from __future__ import annotations

import inspect

import torch


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


def layer_windows(config) -> list[int | None]:
    """The attention window of each layer (None = full attention), as ``edgepack.facts`` derives it."""
    from edgepack.facts import ModelFacts

    return list(ModelFacts.of(config).windows)


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
