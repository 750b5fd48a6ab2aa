"""The torch module edgepack exports to ExecuTorch: the Hugging Face model over an in-place KV cache.

transformers' own exportable wrapper (a ``StaticCache`` of ``max_seq_len`` positions, attention through the
standard SDPA with an in-graph mask) lowers to a program that does, every decode step and in portable kernels,
an ``index_put`` + ``copy_`` of each layer's whole cache, an ``expand`` of the cache to every query head and a
mask over all ``max_seq_len`` positions: SmolLM2-135M decoded 3-4 tokens/s on the 2-core x86 host against
50-55 for optimum-executorch's program on the same runtime (measured). This module uses ExecuTorch's own LLM
ops instead, the ones its runner and optimum-executorch use:

- ``llama::update_cache`` writes the new keys/values into the cache in place (layout [1, positions, kv_heads,
  head_dim]);
- ``llama::custom_sdpa`` attends causally to the positions written so far only (``start_pos + n``), with
  grouped-query heads read in place, in a tiled kernel that allocates no [n, positions] score matrix.

The model keeps its own modules and weights; only two things are swapped in: the cache object handed to it as
``past_key_values`` and the attention function (a registered ``AttentionInterface`` entry). Sliding-window layers
pass an explicit [n, positions] mask to the same op; attention logit soft-capping (Gemma 2), which the op lacks,
is computed in plain torch over the full cache with a mask.
"""

from __future__ import annotations

import torch
from torch import nn

from edgepack.facts import ModelFacts

ATTENTION = "edgepack_executorch"  # the AttentionInterface name; registered with no mask function, so
# transformers builds no mask at all (the attention below knows the positions itself)
CACHE_BUFFERS = ("k_cache", "v_cache")  # buffer name prefixes (planned memory, not serialized)


def load_custom_ops() -> None:
    """Register ``llama::custom_sdpa``/``update_cache`` (their CPU kernels and export-time fake kernels)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401


class InPlaceCache:
    """What the model sees as ``past_key_values``: per layer K/V buffers (owned by ``CausalLMWithCache``)."""

    is_compileable = True  # a static-size cache, as transformers' masking code asks of caches

    def __init__(self):
        # Set by the wrapper's forward on every call (export swaps in its own tensors for the buffers).
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.start: torch.SymInt | int = 0  # the chunk's first position, set by the wrapper's forward
        self.positions: torch.Tensor | None = None  # [n] the chunk's positions

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        # [1, kv_heads, n, head_dim] -> the cache's [1, n, kv_heads, head_dim] layout
        torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys[layer_idx], self.start)
        torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values[layer_idx], self.start)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # only read when position_ids is missing; the wrapper always passes them


def attention(module, query, key_cache, value_cache, attention_mask, *, scaling=None, sliding_window=None,
              softcap=None, cache: InPlaceCache, **kwargs):
    """query [1, heads, n, d]; caches [1, positions, kv_heads, d]; returns ([1, n, heads, d], None)."""
    query = query.transpose(1, 2)
    if softcap:
        return _softcapped(query, key_cache, value_cache, cache, scaling, sliding_window, softcap), None
    if sliding_window:
        mask = _mask(cache.positions, key_cache.shape[1], sliding_window, query.dtype)
        out = torch.ops.llama.custom_sdpa(query, key_cache, value_cache, 0, mask, 0.0, False, scaling)
    else:
        out = torch.ops.llama.custom_sdpa(query, key_cache, value_cache, cache.start, None, 0.0, True, scaling)
    return out, None


def _mask(positions: torch.Tensor, length: int, window: int | None, dtype) -> torch.Tensor:
    """Additive [n, length] mask: key j is seen by the query at position p when j <= p and p - j < window."""
    keys = torch.arange(length, device=positions.device)
    seen = keys[None, :] <= positions[:, None]
    if window:
        seen = seen & (keys[None, :] > positions[:, None] - window)
    zero = torch.zeros((), dtype=dtype)
    return torch.where(seen, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype))


def _softcapped(query, key_cache, value_cache, cache, scaling, window, softcap):
    heads, kv_heads = query.shape[2], key_cache.shape[2]
    q = query.transpose(1, 2)  # [1, heads, n, d]
    k = key_cache.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    v = value_cache.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores + _mask(cache.positions, key_cache.shape[1], window, scores.dtype)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v).transpose(1, 2)


class CausalLMWithCache(nn.Module):
    """``forward(input_ids [1, n], cache_position [n]) -> logits [1, n, vocab]`` over a ``max_seq_len`` cache."""

    def __init__(self, model, max_seq_len: int):
        from transformers import AttentionInterface

        super().__init__()
        load_custom_ops()
        text = model.config.get_text_config()
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = ModelFacts.of(text).head_dim
        self.model = model
        self.max_seq_len = max_seq_len
        dtype = next(model.parameters()).dtype
        for i in range(text.num_hidden_layers):
            for name in CACHE_BUFFERS:
                self.register_buffer(f"{name}_{i}", torch.zeros(1, max_seq_len, kv_heads, head_dim, dtype=dtype))
        self.num_layers = text.num_hidden_layers
        self.cache = cache = InPlaceCache()
        AttentionInterface.register(ATTENTION, lambda *a, **k: attention(*a, cache=cache, **k))
        model.set_attn_implementation(ATTENTION)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        start = cache_position[0].item()
        torch._check_is_size(start)
        torch._check(start + input_ids.shape[1] <= self.max_seq_len)
        # Read the buffers here, not in __init__: export swaps in its own tensors for a module's buffers.
        self.cache.keys = [getattr(self, f"k_cache_{i}") for i in range(self.num_layers)]
        self.cache.values = [getattr(self, f"v_cache_{i}") for i in range(self.num_layers)]
        self.cache.start, self.cache.positions = start, cache_position
        out = self.model(
            input_ids=input_ids,
            position_ids=cache_position.unsqueeze(0),
            past_key_values=self.cache,
            use_cache=True,
        )
        return out.logits


class ZeroPointLinear(nn.Module):
    """An asymmetric quantized linear in XNNPACK's symmetric kernels, computing exactly its codes' weight.

    ``s (q - z) x`` over a group equals ``s (q - 2^(b-1)) x - s (z - 2^(b-1)) sum(x)``: the linear given (by
    ``edgepack.backends.executorch.quantize``) its codes shifted to the signed range and zero points of 0 computes the first term; the
    second is a float linear over each group's input sum, with one weight per (row, group). So the ``.pte`` packs the
    recipe's own codes, the same ones ONNX and Core ML pack, instead of a symmetric variant's.
    """

    def __init__(self, linear: nn.Linear, codes):
        super().__init__()
        self.linear = linear
        self.group = codes.group
        shift = (codes.zero.float() - 2 ** (codes.bits - 1)) * codes.scale.float()
        self.correction = nn.Parameter(-shift.to(linear.weight.dtype), requires_grad=False)  # [rows, groups]

    @property
    def weight(self):
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums = x.unflatten(-1, (-1, self.group)).sum(-1)
        return self.linear(x) + nn.functional.linear(sums, self.correction)
