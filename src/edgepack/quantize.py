"""Stage 2, quantize (torch-side backends): translate a ``Recipe`` into torchao ``quantize_`` calls, in place.

The ExecuTorch exporter quantizes with it before ``torch.export``; the parity harness applies it to an eager
model to separate quantization error from conversion error, so the result must still run eagerly.

Translation (torchao 0.18), shaped by what XNNPACK (executorch 1.5.1) lowers correctly:
- linear layers -> ``Int8DynamicActivationIntxWeightConfig`` (int4 = "8da4w", int8 = "8da8w"), symmetric.
  XNNPACK mis-lowers weight-only linears (it treats them as statically quantized and drops the weight scale:
  outputs off by ~100x, measured) and asymmetric weights, so both are bent to this form and reported;
- embeddings -> ``IntxWeightOnlyConfig`` (ExecuTorch's quantized embedding kernels, zero points allowed);
- group_size null -> per output channel (``PerAxis(0)``), else ``PerGroup(group_size)``;
- 16/32-bit weights -> the recipe's compute ``dtype`` (one float dtype per model: XNNPACK does not mix).

Memory: the model arrives in the checkpoint's dtype (often bf16). Each module is cast to the compute dtype just
before it is quantized, so only one module at a time exists in both precisions; there is no fp32 copy of the
whole model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from edgepack.recipes import Recipe, WeightQuant

_MAX_NAMED = 3  # modules named per unhonoured line before "and N more"


def compute_dtype(recipe: Recipe) -> torch.dtype:
    import torch

    return torch.float16 if recipe.dtype == "float16" else torch.float32


def unhonoured(recipe: Recipe) -> list[str]:
    """What of ``recipe`` this translation cannot honour, known without a model (one line each)."""
    lines = []
    for label, quant in _sections(recipe):
        note = _float_note(quant, recipe) if quant.is_float else _int_note(quant, embedding=label == "embedding")
        if note:
            lines.append(f"{label} ({quant.describe()}): {note}")
    return lines


def quantize_model(model: torch.nn.Module, recipe: Recipe) -> list[str]:
    """Quantize ``model`` in place per ``recipe``; return the rules it could not honour, one line each.

    Linear and embedding modules get ``recipe.for_module(name)`` (embedding section, lm_head section, then the
    first matching rule); every other floating parameter is cast to the recipe's dtype.
    """
    import torch

    dtype = compute_dtype(recipe)
    _untie_output_embedding(model, recipe)
    notes: dict[str, list[str]] = defaultdict(list)  # module-level note -> modules it applies to
    for name, module in list(model.named_modules()):
        _cast_own_tensors(module, dtype)
        if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            continue
        quant = recipe.for_module(name)
        if quant is None or quant.is_float:
            continue
        note = _quantize_module(module, quant)
        if note:
            notes[f"{quant.describe()}: {note}"].append(name)
    return unhonoured(recipe) + [_summarise(note, names) for note, names in notes.items()]


def _sections(recipe: Recipe):
    if recipe.embedding is not None:
        yield "embedding", recipe.embedding
    if recipe.lm_head is not None:
        yield "lm_head", recipe.lm_head
    for rule in recipe.rules:
        yield f"rule {rule.match!r}", rule.weights


def _int_note(quant: WeightQuant, *, embedding: bool) -> str | None:
    notes = []
    if quant.format == "palette":
        notes.append("palettized weights are not supported; quantized linearly (affine) instead")
    if embedding and quant.activations == "int8_dynamic":
        notes.append("activation quantization does not apply to an embedding lookup; weights only")
    if not embedding and quant.activations == "none":
        notes.append("XNNPACK mis-lowers weight-only linear layers; given int8 dynamic activations instead")
    if not embedding and not quant.symmetric:
        notes.append("XNNPACK supports only symmetric linear weights; quantized symmetric instead")
    return "; ".join(notes) or None


def _float_note(quant: WeightQuant, recipe: Recipe) -> str | None:
    if quant.bits != (16 if recipe.dtype == "float16" else 32):
        return f"one float dtype per model; kept at the recipe dtype {recipe.dtype}"
    return None


def _quantize_module(module: torch.nn.Module, quant: WeightQuant) -> str | None:
    """Quantize one linear or embedding module in place; return a note when its shape bent the recipe."""
    import torch
    from torchao.quantization import quantize_

    is_embedding = isinstance(module, torch.nn.Embedding)
    in_features = module.weight.shape[-1]
    group_size = quant.group_size
    note = None
    if group_size is not None and in_features % group_size:
        note = f"group size {group_size} does not divide the input size {in_features}; quantized per channel"
        group_size = None
    if is_embedding:
        # torchao's quantized embedding has no padding_idx variant; it only matters for gradients.
        module.padding_idx = None
    config = _torchao_config(quant, group_size, is_embedding=is_embedding)
    quantize_(module, config, filter_fn=lambda m, _fqn: m is module)
    return note


def _torchao_config(quant: WeightQuant, group_size: int | None, *, is_embedding: bool):
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    granularity = PerAxis(0) if group_size is None else PerGroup(group_size)
    weight_dtype = getattr(torch, f"int{quant.bits}")
    if is_embedding:
        mapping = MappingType.SYMMETRIC if quant.symmetric else MappingType.ASYMMETRIC
        return IntxWeightOnlyConfig(weight_dtype=weight_dtype, granularity=granularity, mapping_type=mapping)
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=weight_dtype, weight_granularity=granularity, weight_mapping_type=MappingType.SYMMETRIC
    )


def _cast_own_tensors(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating parameters and buffers ``module`` itself holds (not its children's) to ``dtype``.

    Parameters are cast in place (``.data``), so a Parameter shared by two modules (tied embeddings) stays
    shared. fp32 buffers stay fp32 under an fp16 recipe: transformers computes RoPE frequencies in fp32.
    """
    import torch

    for param in module.parameters(recurse=False):
        if param.is_floating_point() and param.dtype != dtype and type(param.data) is torch.Tensor:
            param.data = param.data.to(dtype)
    for key, buf in module.named_buffers(recurse=False):
        if buf.is_floating_point() and buf.dtype not in (dtype, torch.float32):
            module._buffers[key] = buf.to(dtype)


def _untie_output_embedding(model: torch.nn.Module, recipe: Recipe) -> None:
    """Give lm_head its own Parameter when it shares the embedding's and either one is quantized.

    The new Parameter shares storage until each module is cast/quantized, so untying costs no memory up front.
    """
    import torch

    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is None or embed is None or head.weight is not embed.weight:
        return
    quantized = [q for q in (recipe.embedding, recipe.lm_head) if q is not None and not q.is_float]
    if quantized:
        head.weight = torch.nn.Parameter(head.weight.detach(), requires_grad=False)


def _summarise(note: str, names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return f"{note} ({shown}{more})"
