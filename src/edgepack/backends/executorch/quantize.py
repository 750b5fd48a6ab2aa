"""Stage 2, quantize (torch-side backends): put a ``Recipe``'s integer codes into the model as torchao tensors.

The ExecuTorch exporter quantizes with it before ``torch.export``. The codes come from the code book
(``edgepack.codes``: computed once, the same for every backend), wrapped unchanged in torchao's
``IntxUnpackedToInt8Tensor`` (what ``quantize_`` itself builds), so the ``.pte`` holds exactly those codes.

Translation (torchao 0.18), shaped by what XNNPACK (executorch 1.5.1) lowers correctly:
- linear layers -> ``Int8DynamicActivationIntxWeightConfig`` (int4 = "8da4w", int8 = "8da8w"). XNNPACK
  mis-lowers weight-only linears (it treats them as statically quantized and drops the weight scale: outputs off
  by ~100x, measured), so they are given int8 dynamic activations and that is reported;
- zero points: XNNPACK's int4/int8 linear kernels are symmetric, so an asymmetric linear keeps its exact codes
  as ``ZeroPointLinear``: ``s (q - z) x = s (q - 2^(b-1)) x - s (z - 2^(b-1)) sum_group(x)``, i.e. the codes
  shifted to the signed range in the symmetric kernel, plus a small float linear over each group's input sum
  (one float per group: ~0.125 byte per int4 weight in fp32). Measured on SmolLM2 int4-block32 in eager torchao
  with int8 activations: KL 0.094 over the built-in text, where the symmetric variant's codes gave 0.130;
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


def quantize_model(model: torch.nn.Module, recipe: Recipe, codes_of=None) -> list[str]:
    """Quantize ``model`` in place per ``recipe``; return the rules it could not honour, one line each.

    Linear and embedding modules get ``recipe.for_module(name)`` (embedding section, lm_head section, then the
    first matching rule) with the codes ``codes_of(name, weight, quant)`` gives (default: round to nearest);
    every other floating parameter is cast to the recipe's dtype.
    """
    from functools import partial

    import torch

    from edgepack.backends import find_codes
    from edgepack.backends.executorch.model import ZeroPointLinear

    codes_of = codes_of or partial(find_codes, None)
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
        codes = codes_of(name, module.weight.detach(), quant)
        note = _quantize_module(module, quant, codes)
        if isinstance(module, torch.nn.Linear) and codes.zero is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, ZeroPointLinear(module, codes))
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
    return "; ".join(notes) or None


def _float_note(quant: WeightQuant, recipe: Recipe) -> str | None:
    if quant.bits != (16 if recipe.dtype == "float16" else 32):
        return f"one float dtype per model; kept at the recipe dtype {recipe.dtype}"
    return None


def _quantize_module(module: torch.nn.Module, quant: WeightQuant, codes) -> str | None:
    """Give one linear or embedding module its codes in place; return a note when its shape bent the recipe."""
    import torch
    from torchao.quantization import IntxUnpackedToInt8Tensor

    is_embedding = isinstance(module, torch.nn.Embedding)
    in_features = module.weight.shape[-1]
    note = None
    if quant.group_size is not None and codes.group != quant.group_size:
        note = f"group size {quant.group_size} does not divide the input size {in_features}; quantized per channel"
    if is_embedding:
        # torchao's quantized embedding has no padding_idx variant; it only matters for gradients.
        module.padding_idx = None
    qdata, zero = codes.q.to(torch.int16), codes.zero
    if zero is not None:  # torchao keeps codes signed: (u - z) == ((u - 2^(b-1)) - (z - 2^(b-1)))
        offset = 2 ** (codes.bits - 1)
        qdata, zero = qdata - offset, (zero.to(torch.int16) - offset).to(torch.int8)
    if zero is None or not is_embedding:  # a linear's zero points go to ZeroPointLinear's correction
        zero = torch.zeros_like(codes.scale, dtype=torch.int8)
    weight = IntxUnpackedToInt8Tensor(
        qdata.to(torch.int8), codes.scale.to(module.weight.dtype), zero, getattr(torch, f"int{codes.bits}"),
        (1, codes.group), module.weight.dtype, None if is_embedding else "int8_asym_per_token",
    )  # fmt: skip
    module.weight = torch.nn.Parameter(weight, requires_grad=False)
    return note


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
