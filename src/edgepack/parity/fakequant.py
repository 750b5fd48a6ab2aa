"""The recipe applied in eager torch, for the parity harness's error split.

Weights are quantized and dequantized in place (round to the recipe's grid, kept in fp32), so the eager model
runs at fp32 speed while carrying exactly the recipe's weight rounding. Dynamic activation quantization is not
simulated, and backends whose quantizers round differently from torchao's symmetric mapping (onnxruntime,
coremltools) see that difference counted in the conversion part of the split. (torchao's eager int8-dynamic kernels
took minutes per prompt on a 135M model here; fake quantization takes seconds.)
"""

from __future__ import annotations


def fake_quantize(model, recipe) -> bool:
    """Round every weight the recipe quantizes; return False when the recipe asks for nothing simulable."""
    import torch

    changed = False
    _untie(model, recipe)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and _simulable(recipe.for_module(name)):
                module.weight.copy_(round_weight(recipe.for_module(name), module.weight))
                changed = True
    return changed


def rounding(recipe, model):
    """The recipe's rounding as a ``transform(module_name, module, weight)`` for a layer-streamed model
    (``edgepack.weights.load_layer_streamed``), or None when the recipe changes none of ``model``'s weights."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding)
    if not any(isinstance(m, kinds) and _simulable(recipe.for_module(n)) for n, m in model.named_modules()):
        return None

    def transform(name, module, weight):
        quant = recipe.for_module(name)
        return round_weight(quant, weight) if isinstance(module, kinds) and _simulable(quant) else weight

    return transform


def round_weight(quant, weight):
    """``weight`` as the recipe stores it, back in float32."""
    import torch

    if quant.is_float:
        return weight.to(torch.float16 if quant.bits == 16 else torch.float32).float()
    return _round(weight.float(), quant.bits, quant.group_size, quant.symmetric)


def _simulable(quant) -> bool:
    return quant is not None and quant.format == "linear"


def _round(w, bits: int, group_size: int | None, symmetric: bool):
    """Quantize-dequantize ``w`` [rows, cols] along its last dim in groups (None: one group per row)."""
    rows, cols = w.shape
    group = group_size if group_size and cols % group_size == 0 else cols
    g = w.reshape(rows, cols // group, group)
    if symmetric:
        # torchao's symmetric mapping (the one ExecuTorch's exports use): scale = max|w| / ((qmax - qmin) / 2)
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(-1, keepdim=True).clamp(min=1e-12) / ((2**bits - 1) / 2)
        q = (g / scale).round().clamp(-qmax - 1, qmax)
        return (q * scale).reshape(rows, cols)
    qmax = 2**bits - 1
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = (-lo / scale).round()
    q = ((g / scale).round() + zero).clamp(0, qmax)
    return ((q - zero) * scale).reshape(rows, cols)


def _untie(model, recipe) -> None:
    """Tied lm_head and embedding may be quantized differently: give lm_head its own copy of the table."""
    import torch

    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings()
    if head is not None and head.weight is embed.weight and recipe.lm_head != recipe.embedding:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
