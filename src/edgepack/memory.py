"""How much memory an artifact needs on a device, from a config dict alone (no weights loaded) or an export folder.

    total(context) = weights + kv_cache(context) + overhead(context)

    weights      before export: sum over weight tensors of  n * bits/8 + groups * (scale_bytes + zero_bytes)
                   groups = n / group_size (per channel: one group per output row); scale_bytes = the recipe's
                   dtype (4 for float32); zero_bytes = bits/8 for asymmetric quantization (the dtype's bytes for
                   a backend that keeps zero points as floats: ExecuTorch), else 0. Each tensor gets
                   its bits from the recipe: the token embedding follows ``embedding``, the output projection
                   ``lm_head``, every linear layer its first matching rule; norms and biases stay at ``dtype``.
                   A tied embedding is stored twice once quantized (a gather table and a matmul weight).
                 from an export folder: the bytes of the artifact's files.
    kv_cache     sum over layers of  2 (K and V) * kv_heads * head_dim * kv_bytes * min(context, window_layer)
                   window_layer = sliding_window for layers that ``layer_types`` marks sliding (or every layer
                   when a config has a window but no ``layer_types``), else unbounded; and unbounded for every
                   layer when the artifact's cache is full-length. Today's three exporters all keep a
                   full-length cache and apply the window in the attention mask (see their docstrings), so
                   each backend's ``cost.kv_window_aware`` is False; an artifact whose cache is a ring buffer says so with
                   ``details["kv_cache_window_aware"] = true``.
                   kv_bytes = 2 for Core ML (fp16 state), else the recipe's dtype (or ``details["kv_cache_dtype"]``).
    overhead     runtime_base + activations
                   activations = 4 * chunk * (vocab + 2 * hidden + intermediate + heads * context)
                   (fp32 logits, residual and MLP buffers, one layer's attention scores for a prefill chunk:
                   ``chunk`` = 128 tokens, an app prefilling a long prompt in pieces, or
                   ``details["prefill_chunk"]``); runtime_base per backend in its
                   descriptor's ``cost`` (``edgepack/backends/<name>/__init__.py``).

All results are bytes. ``docs/memory.md`` states the same formula with a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.backends import PREFILL_CHUNK, Backend, by_runtime, get_backend, runtime_names
from edgepack.errors import ArtifactError
from edgepack.export_record import ExportRecord
from edgepack.facts import ModelFacts

MIB = 1 << 20
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


NOT_WEIGHTS = (".json", ".jinja", ".txt", ".md", ".model")  # config and tokenizer files beside an artifact


@dataclass(frozen=True)
class Tensor:
    name: str  # the module the weight belongs to, as recipes match it
    rows: int  # output features (or vocab rows for the embedding)
    cols: int  # input features

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def weight_tensors(geom: ModelFacts) -> list[Tensor]:
    """The linear weights of a Llama-shaped decoder (q, k, v, o, gate, up, down per layer) plus embeddings."""
    h, q, kv, inter = (
        geom.hidden_size,
        geom.num_heads * geom.head_dim,
        geom.num_kv_heads * geom.head_dim,
        geom.intermediate_size,
    )
    shapes = {
        "self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }  # fmt: skip
    tensors = [Tensor("model.embed_tokens", geom.vocab_size, h), Tensor("lm_head", geom.vocab_size, h)]
    for i in range(geom.num_layers):
        tensors += [Tensor(f"model.layers.{i}.{name}", r, c) for name, (r, c) in shapes.items()]
    return tensors


@dataclass(frozen=True)
class WeightEstimate:
    total: int
    by_kind: dict[str, int] = field(default_factory=dict)  # embedding, lm_head, linear, other


def weight_bytes(geom: ModelFacts, recipe, num_parameters: int | None = None, *,
                 float_zero_points: bool = False) -> WeightEstimate:  # fmt: skip
    """Bytes of the weights once ``recipe`` is applied (see the module docstring for the rule).
    ``float_zero_points``: the backend keeps a linear's zero points as one float per group (ExecuTorch's
    ``ZeroPointLinear``), not packed beside the codes."""
    dtype_bytes = DTYPE_BYTES[recipe.dtype]
    tensors = weight_tensors(geom)
    embed, head, linears = tensors[0], tensors[1], tensors[2:]
    by_kind = {
        "embedding": _tensor_bytes(embed, recipe.embedding, dtype_bytes),
        "lm_head": _tensor_bytes(head, recipe.lm_head, dtype_bytes),
        "linear": sum(_tensor_bytes(t, recipe.for_module(t.name), dtype_bytes, float_zero_points) for t in linears),
    }
    if geom.tie_word_embeddings and _is_float(recipe.embedding) and _is_float(recipe.lm_head):
        by_kind["lm_head"] = 0  # one shared float tensor
    counted = embed.numel * (1 if geom.tie_word_embeddings else 2) + sum(t.numel for t in linears)
    # Norms, biases and anything the Llama shape misses (from the real count when known) stay at dtype.
    other = (
        (num_parameters - counted)
        if num_parameters
        else geom.num_layers * 2 * geom.hidden_size + geom.hidden_size
    )
    by_kind["other"] = max(0, other) * dtype_bytes
    return WeightEstimate(sum(by_kind.values()), by_kind)


def _is_float(quant) -> bool:
    return quant is None or quant.is_float


def _tensor_bytes(t: Tensor, quant, dtype_bytes: int, float_zero_points: bool = False) -> int:
    if quant is None:
        return t.numel * dtype_bytes
    if quant.is_float:
        return t.numel * quant.bits // 8
    groups = t.numel // quant.group_size if quant.group_size else t.rows
    if quant.format == "palette":  # a look-up table of 2**bits entries per group
        return t.numel * quant.bits // 8 + groups * (1 << quant.bits) * dtype_bytes
    zero_bytes = dtype_bytes if float_zero_points else quant.bits / 8  # else packed as the codes are (uint4: 0.5)
    zero_points = 0 if quant.symmetric else int(groups * zero_bytes)
    return t.numel * quant.bits // 8 + groups * dtype_bytes + zero_points


@dataclass(frozen=True)
class Estimate:
    """One artifact's memory at one context length, in bytes."""

    weights: int
    kv_cache: int
    overhead: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def as_dict(self) -> dict:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "overhead": self.overhead,
                "total": self.total, "context": self.context}  # fmt: skip


@dataclass(frozen=True)
class Footprint:
    """What memory depends on, fixed for one artifact; ``at(context)`` gives the estimate."""

    geometry: ModelFacts
    weights: int
    runtime: str  # executorch | onnxruntime | coreml
    kv_bytes: int
    window_aware: bool = False
    chunk: int = PREFILL_CHUNK

    def at(self, context: int) -> Estimate:
        overhead = _backend(self.runtime).cost.base_bytes + self.geometry.activations(context, self.chunk)
        kv = self.geometry.kv_cache(context, self.kv_bytes, self.window_aware)
        return Estimate(self.weights, kv, overhead, context)

    def max_context(self, budget: int, limit: int | None = None) -> int:
        """The largest context (<= ``limit``, default the model's) whose total fits ``budget``; 0 if none."""
        lo, hi = 0, limit or self.geometry.context_length
        if self.at(hi).total <= budget:
            return hi
        while lo < hi:  # total grows with context: bisect for the last context that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.at(mid).total <= budget else (lo, mid - 1)
        return lo


def footprint(config: dict, recipe, target: str, num_parameters: int | None = None) -> Footprint:
    """Before export: from a config dict and a recipe, for one target (executorch | onnx | coreml)."""
    geom = ModelFacts.from_config(config)
    backend = get_backend(target)
    if not backend.zero_points:  # a backend without zero points stores the recipe's symmetric variant
        recipe = recipe.symmetric_variant()
    weights = weight_bytes(geom, recipe, num_parameters, float_zero_points=backend.float_zero_points).total
    return Footprint(geom, weights, backend.runtime, _kv_bytes(backend, recipe.dtype), backend.cost.kv_window_aware)


def artifact_footprints(folder: str | Path) -> list[tuple[Any, Footprint]]:
    """After export: (Artifact, Footprint) for each artifact in an export folder, weights from the file sizes."""
    from edgepack.backends import ARTIFACT_FILE, Artifact

    folder = Path(folder)
    record = ExportRecord.read(folder)
    geom = ModelFacts.from_record(record.checkpoint.model_dump())
    dtype = record.dtype
    found = []
    for art_file in sorted(folder.glob(f"*/{ARTIFACT_FILE}")):
        artifact = Artifact.read(art_file.parent)
        backend = get_backend(artifact.target)
        weights = sum(_size(folder / f) for f in artifact.files if not f.endswith(NOT_WEIGHTS))
        details = artifact.details or {}
        kv_dtype = details.get("kv_cache_dtype")
        kv_bytes = DTYPE_BYTES[kv_dtype] if kv_dtype else _kv_bytes(backend, dtype)
        window_aware = bool(details.get("kv_cache_window_aware", backend.cost.kv_window_aware))
        chunk = int(details.get("prefill_chunk") or PREFILL_CHUNK)
        found.append((artifact, Footprint(geom, weights, backend.runtime, kv_bytes, window_aware, chunk)))
    if not found:
        raise ArtifactError(f"{folder} holds no artifacts (no */{ARTIFACT_FILE}).")
    return found


def _kv_bytes(backend: Backend, dtype: str) -> int:
    return DTYPE_BYTES[backend.cost.kv_dtype or dtype]


def _backend(runtime: str) -> Backend:
    backend = by_runtime(runtime)
    if backend is None:
        raise ArtifactError(f"No backend runs {runtime!r}; known runtimes: {', '.join(runtime_names())}.")
    return backend


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0
