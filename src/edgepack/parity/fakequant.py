"""The recipe applied in eager torch without a code book, for the parity harness's error split of an export
that has none (exports before code books; float recipes' fp16 rounding).

Weights are quantized and dequantized in place by round-to-nearest (``edgepack.codes.rtn``: the one definition
of the codes), kept in fp32, so the eager model runs at fp32 speed. Dynamic activation quantization is not
simulated. Exports with a code book use its codes instead (``edgepack.codes.CodeBook.transform``).
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
    from edgepack.codes.core import rtn

    return rtn(w, bits, group_size, symmetric).dequantize()


def _untie(model, recipe) -> None:
    """Tied lm_head and embedding may be quantized differently: give lm_head its own copy of the table."""
    import torch

    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings()
    if head is not None and head.weight is embed.weight and recipe.lm_head != recipe.embedding:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
