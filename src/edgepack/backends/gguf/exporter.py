"""The GGUF target: one ``model.gguf`` that llama.cpp (and ollama, and llama.cpp's Android and iOS bindings) loads,
and an ollama ``Modelfile`` beside it.

The file is what llama.cpp's own converter would write for the model (tensor names from gguf's ``TensorNameMap``,
hyper-parameters from ``arch``, the tokenizer from ``vocab``) except for the weights: each quantized linear and
embedding holds the code book's codes in a llama.cpp block type (``blocks``), so the calibrated method's codes
reach llama.cpp unchanged instead of being re-rounded by llama-quantize. What the block types cannot carry is
kept float and reported. Norms and biases are F32, as llama.cpp requires.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgepack.backends import Artifact, ExportRequest, integer_settings
from edgepack.backends.gguf import BACKEND
from edgepack.backends.gguf.arch import GGUFArch, arch_for, hparams, rope_freqs
from edgepack.backends.gguf.blocks import block_type, pack, permute_rows
from edgepack.errors import ExportError

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
FP32_CACHE = "--cache-type-k f32 --cache-type-v f32"  # llama-cli / llama-server (ollama: OLLAMA_KV_CACHE_TYPE)
FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q8_0": "MOSTLY_Q8_0"}


class GGUFExporter:
    backend = BACKEND

    def unhonoured(self, recipe) -> list[str]:
        lines: list[str] = []
        for where, quant in integer_settings(recipe, lines):
            if quant.format == "palette":
                lines.append(f"{where}: llama.cpp has no palettized type; stored as linear int{quant.bits} codes")
            if quant.bits not in (4, 8) or (quant.bits == 8 and not quant.symmetric):
                kind = "asymmetric int8" if quant.bits == 8 else f"int{quant.bits}"
                lines.append(f"{where}: no llama.cpp block type carries {kind} codes exactly; kept {recipe.dtype}")
            if quant.group_size and quant.group_size % 32:
                lines.append(f"{where}: llama.cpp's blocks hold 32 weights; group {quant.group_size} kept {recipe.dtype}")
            if quant.activations != "int8_dynamic":
                lines.append(f"{where}: llama.cpp multiplies its 4/8-bit blocks with activations it quantizes to 8 "
                             "bits per block of 32 itself")  # fmt: skip
        if recipe.weight_bits >= 32:
            lines.append(f"KV cache: llama.cpp keeps it in f16 unless told otherwise; run fp32 with {FP32_CACHE}")
        if recipe.quantizes:
            lines.append("scales: stored as fp16 in llama.cpp's blocks (the codes themselves are the book's)")
        return sorted(set(lines))

    def interface(self, artifact: Artifact) -> dict | None:
        d = artifact.details
        return {
            "inputs": [{"name": "tokens", "dtype": "int32", "shape": ["sequence_length"]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["sequence_length", d.get("vocab_size")]}],
            "states": [],  # llama.cpp keeps its KV cache inside the context (llama_memory), not as tensors
            "tokenizer": artifact.path,  # the vocabulary, merges, special ids and chat template are in the file
        }

    def export(self, model, request: ExportRequest) -> Artifact:
        start = time.perf_counter()
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = model.config
        arch = arch_for(config.model_type)
        keys = hparams(config, request.facts, arch, request.max_seq_len)  # refuses before any tensor is packed
        tokenizer_dir = _tokenizer_dir(request)
        request.progress(f"gguf: writing the code book's codes per recipe {request.recipe.name} as llama.cpp blocks "
                         f"({arch.name} architecture)")  # fmt: skip
        writer = _writer(out / GGUF_FILE, arch)
        try:
            tensors, types, tied, notes = _tensors(model, request, arch)
            writer.add_name(request.checkpoint.model_id)
            writer.add_file_type(_file_type(types))
            writer.add_quantization_version(_quant_version())
            for method, _what, value in keys:
                getattr(writer, method)(value)
            notes += _vocab(writer, tokenizer_dir, int(config.vocab_size))
            for name, (data, kind) in tensors.items():
                writer.add_tensor(name, data, raw_dtype=kind)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        from edgepack.backends.gguf.modelfile import modelfile

        (out / MODELFILE).write_text(modelfile(GGUF_FILE, tokenizer_dir, request.max_seq_len, request.special_ids().eos))
        counts = Counter(k.name for _, k in tensors.values())
        return request.artifact(
            self.backend,
            GGUF_FILE,
            [GGUF_FILE, MODELFILE],
            min_runtime=f"llama.cpp with the {arch.name} architecture (tested: llama-cpp-python 0.3.36)",
            export_seconds=round(time.perf_counter() - start, 2),
            unhonoured=self.unhonoured(request.recipe) + notes,
            details={"arch": arch.name, "vocab_size": int(config.vocab_size), "tied_embeddings": tied,
                     "tensor_types": dict(sorted(counts.items())), "dtype": request.recipe.dtype,
                     "codes": getattr(request.codes, "key", None)},  # fmt: skip
        )


def _writer(path: Path, arch: GGUFArch):
    import gguf

    return gguf.GGUFWriter(path, arch.name)


def _quant_version() -> int:
    from gguf.constants import GGML_QUANT_VERSION

    return GGML_QUANT_VERSION


def _file_type(types: list[str]):
    from gguf import LlamaFileType

    main = Counter(types).most_common(1)[0][0] if types else "F32"
    return LlamaFileType[FILE_TYPES[main]]


def _tokenizer_dir(request: ExportRequest) -> Path:
    files = request.tokenizer_files()
    if "tokenizer.json" not in files:
        raise ExportError("The gguf target writes the tokenizer into the file from tokenizer.json, which this export "
                          "has none of. Export another target.")  # fmt: skip
    return files["tokenizer.json"].parent


def _vocab(writer, tokenizer_dir: Path, vocab_size: int) -> list[str]:
    from edgepack.backends.gguf.vocab import write_vocab

    return write_vocab(writer, tokenizer_dir, vocab_size)


def _tensors(model, request: ExportRequest, arch: GGUFArch):
    """(gguf name -> (array, ggml type)), the 2-D weights' type names, whether the head reads the embedding,
    notes."""
    import gguf
    import torch

    config = model.config
    float_type = gguf.GGMLQuantizationType.F16 if request.recipe.dtype == "float16" else gguf.GGMLQuantizationType.F32
    names = _name_map(arch, config.num_hidden_layers)
    modules = dict(model.named_modules())
    heads = {"q_proj": config.num_attention_heads,
             "k_proj": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}  # fmt: skip
    out: dict[str, tuple[np.ndarray, object]] = {}
    types: list[str] = []
    notes: list[str] = []
    for name, tensor in model.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if name.endswith("rotary_emb.inv_freq"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None and module == "lm_head" and getattr(config, "tie_word_embeddings", False):
            continue  # Gemma's layouts have no output tensor: llama.cpp always reads the embedding
        if target is None:
            raise ExportError(f"gguf: no llama.cpp tensor for {name} in the {arch.name} layout. Export another target.")
        rows = heads.get(module.rpartition(".")[2]) if arch.permute_qk else None
        layer = modules.get(module)
        if leaf == "weight" and isinstance(layer, (torch.nn.Linear, torch.nn.Embedding)):
            data, kind, note = _weight(module, layer.weight.detach(), request, float_type, rows)
            types.append(kind.name)
            notes += [note] if note else []
        else:
            value = tensor.detach().float()
            if arch.norm_shift and name.endswith("norm.weight"):
                value = value + arch.norm_shift
            if rows:
                value = permute_rows(value, rows)
            data, kind = value.numpy().astype(np.float32), gguf.GGMLQuantizationType.F32
        out[target] = (data, kind)
    factors = rope_freqs(config, request.facts.head_dim)
    if factors is not None:
        out["rope_freqs.weight"] = (factors, gguf.GGMLQuantizationType.F32)
    tied = _drop_tied_head(out, config)
    return out, types, tied, notes


def _name_map(arch: GGUFArch, blocks: int):
    import gguf

    enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.name)
    return gguf.get_tensor_name_map(enum, blocks)


def _weight(module: str, weight, request: ExportRequest, float_type, rows: int | None):
    """(array, ggml type, note or None) for one linear or embedding weight."""
    quant = request.recipe.for_module(module)
    if quant is None or quant.is_float:
        return _float(weight, float_type, rows), float_type, None
    codes = request.codes_of(module, weight, quant)  # the book's; rounded in row chunks without one
    kind = block_type(codes)
    if kind is None:
        note = f"{module}: int{codes.bits} codes in groups of {codes.group} fit no llama.cpp block; kept {float_type.name}"
        return _float(codes.dequantize(), float_type, rows), float_type, note
    if rows:
        codes = _permuted(codes, rows)
    return pack(codes, kind), kind, None


def _float(weight, float_type, rows: int | None) -> np.ndarray:
    value = weight.float()
    value = permute_rows(value, rows) if rows else value
    return value.numpy().astype(np.float16 if float_type.name == "F16" else np.float32)


def _permuted(codes, heads: int):
    from dataclasses import replace

    zero = None if codes.zero is None else permute_rows(codes.zero, heads)
    return replace(codes, q=permute_rows(codes.q, heads), scale=permute_rows(codes.scale, heads), zero=zero)


def _drop_tied_head(tensors: dict, config) -> bool:
    """Leave out ``output.weight`` when the model ties it and it holds exactly the embedding's blocks
    (llama.cpp then reads the embedding); True when left out."""
    if not getattr(config, "tie_word_embeddings", False) or "output.weight" not in tensors:
        return False
    head, embed = tensors["output.weight"], tensors.get("token_embd.weight")
    if embed is None or head[1] != embed[1] or not np.array_equal(head[0], embed[0]):
        return False
    del tensors["output.weight"]
    return True
