"""Streaming weight loading: a checkpoint's safetensors, tensor by tensor, into an empty transformers model.

The model is built on the meta device (buffers such as rotary tables are real), then every tensor is read from
its memory-mapped file, renamed (a multimodal wrapper's text decoder: ``language_model.model.*`` -> ``model.*``;
its vision parts are skipped unread), dequantized if it is FP8 and cast to the compute dtype, and assigned in
place. Peak memory is the model in its compute dtype plus one tensor in float32: never a float32 copy of the
whole model, never two copies of any weight.

Fine-grained FP8 (``quant_method: fp8``): ``W = float(W_fp8) * weight_scale_inv``, where ``weight_scale_inv`` is
a scalar (per tensor) or one scale per ``weight_block_size`` block ([rows/b0, cols/b1], partial last blocks).
Static activation scales are dropped: the recipe decides how activations are treated on device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepack.checkpoint import SCALE_SUFFIXES, Checkpoint
from edgepack.errors import CheckpointError


def load_streaming(checkpoint: Checkpoint, dtype: str | None = None, attn_implementation: str | None = None):
    """``checkpoint``'s causal LM in ``dtype`` (default: the checkpoint's; FP8 -> bfloat16), eval mode."""
    import torch

    torch_dtype = getattr(torch, dtype or compute_dtype(checkpoint))
    model = _empty_model(checkpoint, torch_dtype, attn_implementation)
    state = dict(iter_tensors(checkpoint, torch_dtype))
    result = model.load_state_dict(state, strict=False, assign=True)
    del state
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    _check_complete(checkpoint.path, model, result.unexpected_keys)
    return model.eval()


def _empty_model(checkpoint: Checkpoint, torch_dtype, attn_implementation: str | None):
    """The model's modules with their parameters on the meta device (buffers, e.g. rotary tables, are real)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(
            checkpoint.config, dtype=torch_dtype, attn_implementation=attn_implementation,
            trust_remote_code=checkpoint.trust_remote_code,
        )  # fmt: skip


def compute_dtype(checkpoint: Checkpoint) -> str:
    """The config's dtype where it is a float compute dtype; bfloat16 otherwise (e.g. an FP8 checkpoint's)."""
    dtype = checkpoint.dtype.removeprefix("torch.")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "bfloat16"


def iter_tensors(checkpoint: Checkpoint, dtype) -> Iterator[tuple[str, Any]]:
    """(name in the exported model, tensor in ``dtype``) for every exported tensor, one at a time."""
    index = TensorIndex(checkpoint)
    for target in index.names:
        yield target, index.read(target, dtype)


def dequantize_fp8(weight, scale, block: list[int] | None, name: str = "weight"):
    """float32 ``weight * scale``: one scale per tensor, or per ``block`` (rows, cols) with partial edge blocks."""
    w = weight.float()
    scale = scale.float()
    if scale.numel() == 1:
        return w * scale.reshape(())
    if block and scale.dim() == 2 and w.dim() == 2:
        rows, cols = w.shape
        b0, b1 = block
        if scale.shape == (-(-rows // b0), -(-cols // b1)):
            full = scale.repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
            return w * full
    raise CheckpointError(
        f"FP8 tensor {name!r} {tuple(w.shape)} has a scale of shape {tuple(scale.shape)}, which matches neither "
        f"one scale per tensor nor weight_block_size {block}. The checkpoint's quantization_config does not "
        "describe its tensors: re-download it."
    )


def _fp8_dtypes():
    import torch

    return (torch.float8_e4m3fn, torch.float8_e5m2)


def _tensor_files(files: list[Path]) -> dict[str, Path]:
    from edgepack.checkpoint import check_safetensors

    return {name: f for f in files for name in check_safetensors(f) if name != "__metadata__"}


def _read(files: dict[str, Path], name: str):
    from safetensors import safe_open

    with safe_open(str(files[name]), framework="pt") as f:
        return f.get_tensor(name)


def _check_complete(path: Path, model, unexpected: list[str]) -> None:
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    missing += [n for n, b in model.named_buffers() if b.is_meta]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(
            f"The weights in {path} do not fit its config.json ({'; '.join(parts)}). "
            "Re-download the checkpoint, or check that config.json belongs to these weights."
        )


# --- a model whose weights stay on disk ---------------------------------------------------------------------


class TensorIndex:
    """Random access to a checkpoint's exported tensors by their name in the model, one at a time: a multimodal
    wrapper's text decoder renamed, its vision parts absent; FP8 dequantized to the compute dtype first (as
    transformers does), so every consumer sees the same values whatever dtype it asks for."""

    def __init__(self, checkpoint: Checkpoint):
        import torch

        self.checkpoint = checkpoint
        self.files = _tensor_files(checkpoint.weight_files)
        self.block = checkpoint.quantization.get("weight_block_size")
        self.source = getattr(torch, compute_dtype(checkpoint))
        wrapper = checkpoint.wrapper
        self.names = {}  # model name -> checkpoint name
        for name in self.files:
            if name.endswith(SCALE_SUFFIXES) or name.endswith("rotary_emb.inv_freq"):
                continue  # scales are read with their weight; old checkpoints saved rotary tables
            target = wrapper.text_name(name) if wrapper else name
            if target is not None:
                self.names[target] = name

    def read(self, target: str, dtype):
        """The tensor the model calls ``target``, dequantized as ``load_streaming`` does, in ``dtype``."""
        name = self.names[target]
        tensor = _read(self.files, name)
        if tensor.dtype in _fp8_dtypes():
            tensor = dequantize_fp8(tensor, _read(self.files, f"{name}_scale_inv"), self.block, name).to(self.source)
        return tensor.to(dtype)


RESIDENT_BYTES = 2 << 30  # weights a layer-streamed model keeps once read: all of a small model, a 4B's first 2 GB


def load_layer_streamed(checkpoint: Checkpoint, dtype: str = "float32", attn_implementation: str | None = None,
                        transform=None, resident_bytes: int = RESIDENT_BYTES):  # fmt: skip
    """``checkpoint``'s causal LM with no weights resident: each module reads its own parameters from the
    checkpoint just before its forward and drops them right after, so a forward pass holds one layer's weights
    (the largest: the embedding table or lm_head) instead of the model's. Every call re-reads the weights (from
    the page cache once warm): for the parity reference, which must not hold a float32 copy of a 4B model.

    ``transform(module_name, module, tensor) -> tensor`` rewrites each weight as it is read (the parity harness
    applies the recipe's rounding with it). The first ``resident_bytes`` of weights read stay resident, so a
    model that fits is read once."""
    import torch

    from edgepack.allocator import return_large_frees

    return_large_frees()
    torch_dtype = getattr(torch, dtype)
    model = _empty_model(checkpoint, torch_dtype, attn_implementation)
    index = TensorIndex(checkpoint)
    budget = [resident_bytes]  # shared by the hooks: what may still stay resident
    tied = getattr(model.config, "tie_word_embeddings", False)
    for module_name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        sources = {}
        for pname in own:
            full = f"{module_name}.{pname}" if module_name else pname
            if full not in index.names and tied and full == "lm_head.weight":
                full = "model.embed_tokens.weight"
            if full not in index.names:
                raise CheckpointError(f"The weights in {checkpoint.path} have no tensor {full!r} for its config.")
            sources[pname] = full
        placeholders = dict(module.named_parameters(recurse=False))  # meta: what the module holds between calls
        reader = _ReadWeights(index, module_name, sources, torch_dtype, transform, budget)
        module.register_forward_pre_hook(reader)
        module.register_forward_hook(_DropWeights(reader, placeholders))
    return model.eval()


class _ReadWeights:
    def __init__(self, index: TensorIndex, module_name: str, sources: dict, dtype, transform, budget: list[int]):
        self.index, self.module_name, self.sources = index, module_name, sources
        self.dtype, self.transform, self.budget = dtype, transform, budget
        self.resident = False

    def __call__(self, module, args):
        import torch

        if self.resident:
            return
        nbytes = 0
        for pname, source in self.sources.items():
            tensor = self.index.read(source, self.dtype)
            if self.transform is not None and pname == "weight":  # a bias (Qwen2's q/k/v) is never quantized
                tensor = self.transform(self.module_name, module, tensor)
            module._parameters[pname] = torch.nn.Parameter(tensor, requires_grad=False)
            nbytes += tensor.numel() * tensor.element_size()
        if nbytes <= self.budget[0]:
            self.budget[0] -= nbytes
            self.resident = True


class _DropWeights:
    def __init__(self, reader: _ReadWeights, placeholders: dict):
        self.reader, self.placeholders = reader, placeholders

    def __call__(self, module, args, output):
        if not self.reader.resident:
            module._parameters.update(self.placeholders)


# --- stand-ins for tracing -----------------------------------------------------------------------------------


def swap_for_stand_ins(model, dtype, matrices_only: bool = False) -> dict:
    """Replace each parameter by a one-element stride-0 stand-in of its shape (tied ones stay tied); return
    parameter name -> real tensor. Distinct stand-in values keep the tracers and coremltools' const deduplication
    from merging two of the same shape (they did, on SmolLM2's 30 layers, when values repeated every 97).

    Exporters trace the stand-ins and write each real tensor on its own afterwards. ``matrices_only`` keeps
    vectors (norm weights, biases: small) real, for a converter that folds them into other constants."""
    import torch

    real, stand_ins = {}, {}
    for module_name, module in model.named_modules():
        for pname, param in list(module.named_parameters(recurse=False)):
            if matrices_only and param.dim() < 2:
                continue
            if id(param) not in stand_ins:
                value = _distinct_value(len(stand_ins)).to(dtype).reshape(1)
                stand_ins[id(param)] = torch.nn.Parameter(value.expand(param.shape), requires_grad=False)
                real[f"{module_name}.{pname}" if module_name else pname] = param.detach()
            setattr(module, pname, stand_ins[id(param)])
        for bname, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_floating_point():
                module._buffers[bname] = buffer.to(dtype)  # as a whole-model cast would (rotary tables, ...)
    return real


def _distinct_value(index: int):
    """The index-th of 7,168 values in [2^-8, 0.5) that stay distinct in fp16 (successive fp16 bit patterns),
    so stand-ins differ in fp32 and after a cast to fp16 (Core ML's compute precision)."""
    import torch

    if index >= 0x3800 - 0x1C00:
        raise ValueError("more than 7168 weight matrices: no distinct fp16 stand-in left")
    return torch.tensor(0x1C00 + index, dtype=torch.int16).view(torch.float16).float()
