"""The MLX target: the folder ``mlx_lm.load`` (and mlx-swift's ``LLMModelFactory``) reads.

- ``model.safetensors``: the decoder's tensors under their Hugging Face names (mlx-lm's models use them). A
  quantized linear or embedding is MLX's affine layout: ``weight`` uint32 [rows, cols * bits / 32] holding the
  codes (element j of a word at bits ``j * bits``), ``scales`` and ``biases`` [rows, cols / group], with
  ``w = scales * code + biases``. The code book's codes go in unchanged: an asymmetric code ``q`` with zero point
  ``z`` is ``scales = s, biases = -s * z``; a symmetric code is shifted to ``q + 2^(b-1)`` with
  ``biases = -s * 2^(b-1)``. MLX groups are 32, 64 or 128 columns; a per-row (or other) group is written as
  MLX groups that repeat its scale and bias, which represents the same codes exactly.
- ``config.json``: the model's config with ``quantization`` {group_size, bits, mode: affine} (mlx-lm infers each
  module's own group size and bits from the saved shapes) and explicit ``layer_types`` from edgepack's facts, so
  the sliding windows MLX applies are the ones the reference applies.
- the tokenizer files (tokenizer.json, its config, the chat template).

A tied embedding whose codes equal the output head's is stored once (mlx-lm's ``as_linear``); otherwise the head
is written on its own and the config unties it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from edgepack.backends import Artifact, ExportRequest, integer_settings
from edgepack.backends.mlx import BACKEND
from edgepack.errors import ExportError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MLX_GROUPS = (128, 64, 32)  # the affine group sizes MLX's kernels take
MLX_BITS = (2, 3, 4, 5, 6, 8)
ROWS_PER_CHUNK = 4096
# edgepack model_type -> the mlx-lm module that runs it, where mlx-lm's own name differs.
MODEL_TYPES = {"ministral": "llama", "mistral": "llama"}
# How each mlx-lm module learns which layers slide: from ``layer_types`` (beside at least one full layer), or
# from Gemma 3's ``sliding_window_pattern`` (every n-th layer full). The others apply no window at all.
LAYER_TYPES_WINDOWS = ("llama", "ministral3")
PATTERN_WINDOWS = ("gemma3_text",)


class MLXExporter:
    backend = BACKEND

    def unhonoured(self, recipe) -> list[str]:
        lines: list[str] = []
        for where, quant in integer_settings(recipe, lines):
            if quant.bits not in MLX_BITS:
                lines.append(f"{where}: MLX has no {quant.bits}-bit affine kernel; the weights stay {recipe.dtype}")
            if quant.format == "palette":
                lines.append(f"{where}: palettized weights have no MLX kernel; stored as linear int{quant.bits}")
            if quant.activations == "int8_dynamic":
                lines.append(f"{where}: MLX computes with float activations; int8 dynamic activations not applied")
            if quant.group_size not in (None, *MLX_GROUPS):
                lines.append(f"{where}: group {quant.group_size} is written as MLX groups repeating its scales "
                             "(the same codes)")  # fmt: skip
        return sorted(set(lines))

    def interface(self, artifact: Artifact) -> dict | None:
        d = artifact.details
        dtype = d.get("dtype", "float32")
        return {
            "inputs": [{"name": "inputs", "dtype": "int32", "shape": [1, "sequence_length"]}],
            "outputs": [{"name": "logits", "dtype": dtype, "shape": [1, "sequence_length", d.get("vocab_size")]}],
            # mlx-lm / mlx-swift keep the KV cache as objects beside the model (make_prompt_cache), not as tensors
            "states": [],
            "tokenizer": str(Path(artifact.path).parent / "tokenizer.json"),
        }

    def export(self, model, request: ExportRequest) -> Artifact:
        from safetensors.numpy import save_file

        start = time.perf_counter()
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        recipe = request.recipe
        request.progress(f"mlx: packing the code book's codes per recipe {recipe.name} into MLX's affine layout")
        tensors, quantized, tied, notes = _tensors(model, request)
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "mlx"})
        config = _config(model.config, request, quantized, tied)
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        files = [WEIGHTS_FILE, CONFIG_FILE]
        for name, src in request.tokenizer_files().items():
            if name != CONFIG_FILE:
                shutil.copyfile(src, out / name)
                files.append(name)
        return request.artifact(
            self.backend,
            WEIGHTS_FILE,
            files,
            min_runtime=f"mlx {BACKEND.runtime_version}",
            export_seconds=round(time.perf_counter() - start, 2),
            unhonoured=self.unhonoured(recipe) + notes,
            details={"dtype": recipe.dtype, "vocab_size": int(model.config.vocab_size),
                     "model_type": config["model_type"], "tied_embeddings": tied,
                     "quantized_modules": len(quantized), "codes": _codes_key(request)},  # fmt: skip
        )


def _codes_key(request: ExportRequest):
    return getattr(request.codes, "key", None)


def _tensors(model, request: ExportRequest):
    """(name -> numpy array, {module: (group, bits)}, whether the embedding stays tied, notes)."""
    import torch

    recipe = request.recipe
    float_dtype = np.float16 if recipe.dtype == "float16" else np.float32
    modules = dict(model.named_modules())
    state = {name: t.detach() for name, t in model.state_dict(keep_vars=False).items()}
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and "lm_head" in modules
    packed: dict[str, dict] = {}
    quantized: dict[str, tuple[int, int]] = {}
    notes: list[str] = []
    for name, module in modules.items():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            continue
        quant = recipe.for_module(name)
        if quant is None or quant.is_float or quant.bits not in MLX_BITS:
            continue
        codes = request.codes_of(name, module.weight.detach(), quant)  # the book's; rounds in row chunks without one
        group = _mlx_group(codes.group, codes.q.shape[1])
        if group is None:
            notes.append(f"{name}: {codes.q.shape[1]} columns fit no MLX group (32/64/128); kept {recipe.dtype}")
            state[f"{name}.weight"] = codes.dequantize()
            continue
        packed[name] = _affine(codes, group, float_dtype)
        quantized[name] = (group, codes.bits)
    if tied:
        embed = next(n for n in modules if n.endswith("embed_tokens"))
        tied = _same(packed.get(embed), packed.get("lm_head"))
    tensors = {}
    for name, tensor in state.items():
        module, _, leaf = name.rpartition(".")
        if name.endswith("rotary_emb.inv_freq") or (tied and module == "lm_head"):
            continue
        if module in packed and leaf == "weight":
            tensors.update({f"{module}.{k}": v for k, v in packed[module].items()})
        else:
            tensors[name] = np.ascontiguousarray(tensor.float().numpy().astype(float_dtype))
    if tied:
        quantized.pop("lm_head", None)
    return tensors, quantized, tied, notes


def _mlx_group(group: int, cols: int) -> int | None:
    """The MLX group that holds codes grouped by ``group`` columns: the largest of MLX's sizes dividing both."""
    return next((g for g in MLX_GROUPS if group % g == 0 and cols % g == 0), None)


def _affine(codes, group: int, float_dtype) -> dict[str, np.ndarray]:
    """MLX's (weight, scales, biases) for ``codes``, exactly: w = scales * unsigned_code + biases. Packed
    ``ROWS_PER_CHUNK`` rows at a time into preallocated outputs: a 131k-row head's int32 temporaries would
    otherwise take gigabytes beside the loaded model (a 4B export passed 14 GB that way)."""
    rows, cols = codes.q.shape
    repeat = codes.group // group  # MLX groups per code-book group: each repeats its scale and zero point
    out = {"weight": np.empty((rows, cols * codes.bits // 32), np.uint32),
           "scales": np.empty((rows, cols // group), float_dtype),
           "biases": np.empty((rows, cols // group), float_dtype)}  # fmt: skip
    offset = 1 << (codes.bits - 1)
    for start in range(0, rows, ROWS_PER_CHUNK):
        part = slice(start, start + ROWS_PER_CHUNK)
        q = codes.q[part].numpy()
        scale = codes.scale[part].float().numpy()
        if codes.zero is None:  # symmetric: shift the signed codes to MLX's unsigned range
            unsigned, zero = (q.astype(np.int16) + offset).astype(np.uint8), np.full_like(scale, offset)
        else:
            unsigned, zero = q, codes.zero[part].numpy().astype(np.float32)
        out["weight"][part] = _pack(unsigned, codes.bits)
        out["scales"][part] = np.repeat(scale, repeat, axis=1)
        out["biases"][part] = -np.repeat(scale * zero, repeat, axis=1)
    return out


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint32 words of ``values`` [rows, cols], ``32 // bits`` per word, element j at bits ``j * bits`` (MLX's
    order; 3/5/6 bits span words, so they are packed as a little-endian bit stream)."""
    rows, cols = values.shape
    if 32 % bits == 0:
        per = 32 // bits
        v = values.reshape(rows, cols // per, per).astype(np.uint32)
        shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
        return np.bitwise_or.reduce(v << shifts, axis=2).astype(np.uint32)
    bitstream = np.unpackbits(values.astype("<u1")[..., None], axis=-1, bitorder="little")[..., :bits]
    words = np.packbits(bitstream.reshape(rows, -1), axis=-1, bitorder="little")
    return words.view("<u4").reshape(rows, cols * bits // 32)


def _same(embed: dict | None, head: dict | None) -> bool:
    """Whether the tied head can read the embedding's tensors: both float, or both packed from equal codes."""
    if embed is None and head is None:
        return True
    if embed is None or head is None:
        return False
    return all(np.array_equal(embed[k], head[k]) for k in ("weight", "scales", "biases"))


def _config(config, request: ExportRequest, quantized: dict, tied: bool) -> dict:
    out = config.to_dict()
    for key in ("torch_dtype", "dtype", "_name_or_path", "architectures", "auto_map", "quantization_config"):
        out.pop(key, None)
    model_type = out.get("model_type")
    out["model_type"] = MODEL_TYPES.get(model_type, model_type)
    out["tie_word_embeddings"] = tied
    out.update(_legacy_rope(out.get("rope_parameters")))
    out.update(_windows(out["model_type"], request.facts.windows, request.max_seq_len))
    if quantized:
        # The most common (group, bits) is the default; mlx-lm reads every other module's from its shapes.
        counts: dict[tuple[int, int], int] = {}
        for setting in quantized.values():
            counts[setting] = counts.get(setting, 0) + 1
        group, bits = max(counts, key=counts.get)
        out["quantization"] = {"group_size": group, "bits": bits, "mode": "affine"}
    return out


def _legacy_rope(params: dict | None) -> dict:
    """transformers 5 keeps rope settings in ``rope_parameters``; mlx-lm's models read the older keys
    (``rope_theta``, ``rope_scaling``, Gemma 3's ``rope_local_base_freq``) and fall back to their own defaults
    (Qwen2: theta 1e6) when absent, so the older keys are written from the new ones."""
    if not params:
        return {}
    if "full_attention" in params or "sliding_attention" in params:  # per layer kind (Gemma 3)
        full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        out = _legacy_rope(full)
        if "rope_theta" in local:
            out["rope_local_base_freq"] = local["rope_theta"]
        return out
    out = {"rope_theta": params["rope_theta"]} if "rope_theta" in params else {}
    if params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        out["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}
    return out


def _windows(model_type: str, windows: tuple, max_seq_len: int) -> dict:
    """The config keys that make mlx-lm apply edgepack's per-layer windows; ExportError where it cannot."""
    if not any(windows) or max_seq_len <= min(w for w in windows if w):
        return {"layer_types": ["full_attention"] * len(windows)} if any(windows) else {}  # nothing outgrows them
    window = next(w for w in windows if w)
    kinds = ["sliding_attention" if w else "full_attention" for w in windows]
    if model_type in LAYER_TYPES_WINDOWS and not all(windows):
        return {"layer_types": kinds, "sliding_window": window}
    if model_type in PATTERN_WINDOWS:
        pattern = next((p for p in range(1, len(windows) + 1)
                        if all(bool(w) == ((i + 1) % p != 0) for i, w in enumerate(windows))), None)  # fmt: skip
        if pattern is not None:
            return {"sliding_window": window, "sliding_window_pattern": pattern}
    why = ("mlx-lm applies a window only beside full-attention layers" if model_type in LAYER_TYPES_WINDOWS
           else f"mlx-lm's {model_type} model applies no sliding window in this layout")  # fmt: skip
    sliding = sum(1 for w in windows if w)
    raise ExportError(
        f"{sliding} of this model's {len(windows)} layers attend within a window of {window} tokens; {why}. Export mlx "
        f"with --max-seq-len {window} or less (within the window every layer sees every position)."
    )
