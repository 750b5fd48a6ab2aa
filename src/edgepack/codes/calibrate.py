"""GPTQ over a whole model, one decoder layer at a time, never holding more than one layer's float weights.

1. The model is built empty (meta). The token embedding is read and the calibration windows run through it;
   every decoder layer's ``forward`` is swapped for a recorder that keeps the keyword arguments transformers
   passes it (masks per attention type, rotary tables) and returns its input, so one cheap pass captures what
   each layer needs without running any of them.
2. For each layer: read its weights (float32) from the checkpoint; run it over the windows with hooks summing each
   quantized linear's input Hessian ``X^T X`` (q/k/v and gate/up share one, computed once); GPTQ each linear;
   put the dequantized codes in place; run the layer again so the next layer calibrates on what the quantized
   model will feed it; drop the layer.
"""

from __future__ import annotations

import time

import torch

from edgepack.codes.gptq import gptq

BATCH = 8  # windows per forward


class _Stop(Exception):
    pass


def calibrate_layers(checkpoint, recipe, ids: torch.Tensor, say=lambda m: None, emit=None):
    """GPTQ codes of every quantized decoder-layer linear over calibration ``ids`` [windows, seq_len]; each is
    passed to ``emit(name, codes)`` as it is found (the code book writes it). Returns (names done, per-layer
    seconds, the damping a linear needed where it was raised)."""
    from edgepack.weights import TensorIndex, _empty_model

    method = recipe.method
    model = _empty_model(checkpoint, torch.float32, "sdpa")
    index = TensorIndex(checkpoint)
    layers = _decoder_layers(model)
    with torch.no_grad():
        inputs, layer_kwargs = _capture(model, layers, index, ids)
        done, seconds, damping = [], [], {}
        for i, layer in enumerate(layers):
            start = time.perf_counter()
            prefix = f"model.layers.{i}"
            _read_module(layer, prefix, index)
            targets = _quantized_linears(layer, prefix, recipe)
            remaining = dict(targets)
            while remaining:
                # True-sequential: each stage (linears sharing one input: q/k/v, o, gate/up, down) calibrates on
                # the inputs the already-quantized stages before it produce.
                hessians, stage = _hessians(layer, remaining, inputs, layer_kwargs[i])
                for name in stage:
                    module = remaining.pop(name)
                    quant = recipe.for_module(name)
                    h, n = hessians[name]
                    c, used = gptq(module.weight, 2 * h / n, quant.bits, quant.group_size, quant.symmetric,
                                   damping=method.damping, act_order=method.act_order,
                                   clip_search=method.clip_search)  # fmt: skip
                    done.append(name)
                    if emit is not None:
                        emit(name, c)
                    if used != method.damping:
                        damping[name] = used
                    module.weight.data = c.dequantize()
                del hessians
            inputs = [_layer_out(layer(x, **kw)) for x, kw in zip(inputs, layer_kwargs[i])]
            layer.to("meta")
            seconds.append(round(time.perf_counter() - start, 2))
            say(f"calibrate: layer {i + 1}/{len(layers)} ({seconds[-1]:.1f} s)")
    return done, seconds, damping


def _decoder_layers(model) -> list:
    base = getattr(model, "model", model)
    return list(base.layers)


def _capture(model, layers, index, ids):
    """(layer-0 inputs per batch, per layer: the kwargs transformers passed it per batch)."""
    base = getattr(model, "model", model)
    embed = base.embed_tokens
    _read_module(embed, "model.embed_tokens", index)
    inputs, kwargs = [], [[] for _ in layers]

    def recorder(i):
        def forward(hidden_states, *args, **kw):
            if i == 0:
                inputs.append(hidden_states.detach())
            kwargs[i].append(kw)
            return hidden_states

        return forward

    stop = base.norm.register_forward_pre_hook(_stop)
    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        for batch in ids.split(BATCH):
            try:
                base(input_ids=batch, use_cache=False)
            except _Stop:
                pass
    finally:
        stop.remove()
        for layer in layers:
            del layer.forward
        embed.to("meta")
    return inputs, kwargs


def _stop(module, args):
    raise _Stop  # the layers' inputs are captured: nothing after them needs to run


def _read_module(module, prefix: str, index) -> None:
    """Give ``module`` its real float32 parameters from the checkpoint (it was built on meta)."""
    for pname, _ in list(module.named_parameters()):
        owner_name, _, leaf = pname.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        tensor = index.read(f"{prefix}.{pname}", torch.float32)
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)


def _quantized_linears(layer, prefix: str, recipe) -> dict:
    found = {}
    for sub, module in layer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        name = f"{prefix}.{sub}"
        quant = recipe.for_module(name)
        if quant is not None and not quant.is_float and quant.format == "linear":
            found[name] = module
    return found


def _hessians(layer, targets: dict, inputs: list, kwargs: list) -> tuple[dict, list[str]]:
    """(name -> (sum of X^T X over every calibration token, token count), the names of the first stage): one
    pass of ``layer`` per batch, stopped once the first stage's input is seen. A stage is the linears that read
    one input tensor (q/k/v and gate/up share theirs, whose X^T X is computed once)."""
    sums: dict[str, list] = {}
    shared: dict = {}  # per batch: (input tensor identity) -> X^T X

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            key = (x.data_ptr(), tuple(x.shape))
            if key not in shared:  # the tensor is kept too, so its memory cannot be reused under the same key
                if len(shared) == 1:
                    raise _Stop  # a second input: the first stage has all it needs from this batch
                shared[key] = (x, x.T @ x)
            xtx = shared[key][1]
            entry = sums.setdefault(name, [torch.zeros_like(xtx), 0])
            entry[0] += xtx
            entry[1] += x.shape[0]

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in targets.items()]
    try:
        for x, kw in zip(inputs, kwargs):
            shared.clear()
            try:
                layer(x, **kw)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return sums, list(sums)


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out
