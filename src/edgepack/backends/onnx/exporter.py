"""The ONNX target: a KV-cache decoder in the onnxruntime-genai layout, its weights written one tensor at a time.

Stages: trace ``onnx_model.PastPresentCausalLM`` without its weights (TorchScript exporter, opset 20, the weights
as named graph inputs; onnxruntime's basic optimizations fold the shape arithmetic) -> attach each weight per
recipe, streamed into ``model.onnx.data`` (``onnx_weights``: MatMulNBits for linear layers with the same codes as
the torch-side rounding, GatherBlockQuantized for the embedding, float tensors otherwise) -> inline the data when
the model fits one protobuf -> genai_config.json + tokenizer files beside the model, so that onnxruntime-genai
runs the folder as it is. Peak memory: the model in its checkpoint dtype plus one tensor's rounding (3.4B: 5.2 GB).

Graph interface (the optimum / onnxruntime-genai layout): inputs ``input_ids``, ``attention_mask`` (over past +
new tokens), ``position_ids``, ``past_key_values.N.key/value`` [1, kv_heads, past, head_dim]; outputs
``logits`` (float32) and ``present.N.key/value`` (past + new). Batch is 1. The cache keeps every position; the
graph builds its own attention mask, so a sliding window applies past the window instead of being dropped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from edgepack.errors import ExportError
from edgepack.facts import ModelFacts
from edgepack.backends import Artifact, ExportRequest
from edgepack.backends.onnx import BACKEND
from edgepack.backends.onnx.weights import NBits

OPSET = 20
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"
EXTERNAL_DATA_BYTES = 1_800_000_000  # below protobuf's 2 GiB limit, with room for the graph itself
MAX_MATMUL_BLOCK = 256  # MLAS quantizes MatMulNBits weights in blocks of 16..256 only
# Measured with onnxruntime 1.32 on the 2-core x86 host, SmolLM2's lm_head (576 x 49152) at one token:
# 8-bit weight-only MatMulNBits dequantizes the whole weight per call (accuracy levels 0-3: 100-220 ms);
# accuracy_level 4 (int8 activations) has a kernel (2.3 ms). Forcing it instead of the recipe's weight-only
# cost SmolLM2 int8-weight cosine 0.998 -> 0.993 and greedy agreement 1.0 -> 0.59 (measured), so it is not
# forced: the shipped int4 recipes ask for int8 activations on their int8 lm_head.
MIN_ORT = "onnxruntime 1.20"  # MatMulNBits 8-bit and GatherBlockQuantized
# onnxruntime-genai 0.18 accepts a fixed list of model types; the graph is the generic decoder either way, so the
# Mistral derivatives it does not list run under "mistral".
GENAI_MODEL_TYPES = {"ministral3": "mistral", "ministral": "mistral"}


class OnnxExporter:
    backend = BACKEND

    def unhonoured(self, recipe) -> list[str]:
        """Recipe settings onnxruntime cannot honour exactly, one line each with what is done instead."""
        lines = []
        for where, quant in recipe.settings():
            lines.extend(_unhonoured_setting(where, quant, recipe.dtype))
        return sorted(set(lines))

    def interface(self, artifact: Artifact) -> dict | None:
        d = artifact.details
        if "inputs" not in d or "outputs" not in d:
            return None  # an artifact.json from before the names were recorded
        kv = [1, d.get("num_kv_heads"), "past_sequence_length", d.get("head_dim")]
        dtype = "float16" if d.get("kv_dtype") == "float16" else "float32"
        ids = [{"name": n, "dtype": "int64", "shape": [1, "sequence_length" if n != "attention_mask" else
                                                         "total_sequence_length"]} for n in d["inputs"][:3]]  # fmt: skip
        return {
            "inputs": ids + [{"name": n, "dtype": dtype, "shape": kv} for n in d["inputs"][3:]],
            "outputs": [{"name": d["outputs"][0], "dtype": dtype, "shape": [1, "sequence_length", d.get("vocab_size")]}]
            + [{"name": n, "dtype": dtype, "shape": kv[:2] + ["total_sequence_length"] + kv[3:]} for n in d["outputs"][1:]],
            "states": [],  # the KV cache goes in and out as tensors (onnxruntime-genai's layout)
            "tokenizer": str(Path(artifact.path).parent / "tokenizer.json"),
        }  # fmt: skip

    def export(self, model, request: ExportRequest) -> Artifact:
        start = time.perf_counter()
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        recipe = request.recipe
        config = genai_config(model.config, request)
        details = _details(model.config, recipe)
        request.progress(f"onnx: tracing the graph ({recipe.dtype}; weights stay out of it)")
        traced = export_graph(model, dtype=recipe.dtype)
        del model  # the traced weights are the only references left: each goes once it is written
        request.progress(f"onnx: writing the weights per recipe {recipe.name}, one tensor at a time")
        files = write_model(traced, recipe, out, request.codes_of)
        (out / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        files.append(GENAI_CONFIG)
        for name, src in request.tokenizer_files().items():
            shutil.copyfile(src, out / name)
            files.append(name)
        return request.artifact(
            self.backend,
            MODEL_FILE,
            files,
            min_runtime=MIN_ORT,
            export_seconds=round(time.perf_counter() - start, 2),
            unhonoured=self.unhonoured(recipe),
            details=details,
        )


# --- recipe translation -------------------------------------------------------------------------------------


def _unhonoured_setting(where: str, quant, dtype: str) -> list[str]:
    lines = []
    kept = "fp16" if dtype == "float16" else "fp32"
    if quant.is_float and quant.bits != (16 if dtype == "float16" else 32):
        lines.append(
            f"{where}: fp{quant.bits} weights inside a {dtype} recipe are kept {kept} (one dtype per graph)"
        )
    if quant.format == "palette":
        lines.append(
            f"{where}: palettized weights have no onnxruntime operator; stored as linear int{quant.bits}"
        )
    if not quant.is_float and quant.group_size is None and where != "embedding":
        lines.append(
            f"{where}: per-channel int{quant.bits} is stored in blocks along the input dim where that dim exceeds "
            f"{MAX_MATMUL_BLOCK} (MatMulNBits' largest block): the largest power of two up to {MAX_MATMUL_BLOCK} "
            "that divides it; finer, so no less accurate"
        )
    if quant.activations == "int8_dynamic":
        if where == "embedding":
            lines.append(f"{where}: int8 dynamic activations do not apply to a lookup; ignored")
        else:
            block = quant.group_size or f"up to {MAX_MATMUL_BLOCK} (the per-channel block above)"
            lines.append(
                f"{where}: int8 dynamic activations are quantized per block of {block} inside MatMulNBits "
                "(accuracy_level=4), not per token"
            )
    return lines


def nbits_for(quant) -> NBits | None:
    """The onnxruntime setting for a WeightQuant; None keeps the weight float."""
    if quant is None or quant.is_float:
        return None
    # 8-bit weight-only is honoured although slow on CPU (see above MIN_ORT): recipes that want speed ask
    # for int8 activations, which accuracy_level 4 gives.
    accuracy = 4 if quant.activations == "int8_dynamic" else None
    return NBits(quant.bits, quant.group_size, quant.symmetric, accuracy)


def _block(setting: NBits, k: int, largest: int = MAX_MATMUL_BLOCK) -> int:
    # Per channel = one block over all of K: the smallest power of two >= K (the op pads K with zeros, which
    # change neither a symmetric scale nor the product), as far as the kernel's largest block allows. Past it, the
    # largest power of two that divides K: SmolLM2's K of 576 in blocks of 256 padded every such row by a third
    # (9.4 MB of zeros in its lm_head alone); blocks of 64 pad nothing for 6 more scales a row.
    if setting.block_size:
        return setting.block_size
    if k <= largest:
        return max(16, 1 << (k - 1).bit_length())
    return next((b for b in (largest >> i for i in range(5)) if b >= 16 and k % b == 0), largest)


# --- export ---------------------------------------------------------------------------------------------------


def export_graph(model, *, dtype: str = "float32"):
    """The weightless graph of ``model`` with the KV-cache interface described in the module docstring, and its
    weights aside (``onnx_weights.Traced``). The model's parameters are replaced by stand-ins: it is used up.

    The TorchScript exporter, not dynamo: 10-20x faster here (2 s against 12-40 s for a tiny model on 2
    cores), and after onnxruntime's basic (portable, standard-op) optimizations the graph is the same size as
    dynamo's. onnxscript's optimizer gives the same graph but takes minutes on a 30-layer model.
    """
    import torch

    from edgepack.logs import quiet_libraries
    from edgepack.backends.onnx.model import PastPresentCausalLM
    from edgepack.backends.onnx.weights import trace

    quiet_libraries()
    _quiet_onnx_logs()
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    names = io_names(model.config.num_hidden_layers)
    args = _example_inputs(model.config, torch_dtype)
    try:
        return trace(model, PastPresentCausalLM, args, names, _dynamic_axes(names), OPSET, torch_dtype)
    except Exception as exc:  # the tracer raises many types; the message is what matters
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc


def write_model(traced, recipe, out: Path, codes_of) -> list[str]:
    """Attach the weights per ``recipe`` (streamed into model.onnx.data) and save model.onnx; a model small
    enough for one protobuf gets its weights back inline."""
    import onnx

    from edgepack.backends.onnx.weights import ExternalData, attach

    data = ExternalData(out / DATA_FILE)
    try:
        attach(traced, recipe, data, module_of, nbits_for, _block, codes_of)
    finally:
        data.close()
    path = out / MODEL_FILE
    onnx.save_model(traced.proto, path)
    if data.offset >= EXTERNAL_DATA_BYTES:
        return [MODEL_FILE, DATA_FILE]
    onnx.save_model(onnx.load(path), path)  # loads the external data; saves it inline
    (out / DATA_FILE).unlink()
    return [MODEL_FILE]


def _quiet_onnx_logs() -> None:
    import logging

    # onnxruntime's quantizer installs an INFO root handler; these would then print every pass and node.
    for name in ("onnx_ir", "onnxscript", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.WARNING)


def io_names(num_layers: int) -> dict[str, list[str]]:
    kv = [f"{{}}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return {
        "inputs": ["input_ids", "attention_mask", "position_ids"] + [n.format("past_key_values") for n in kv],
        "outputs": ["logits"] + [n.format("present") for n in kv],
    }


def head_dim(config) -> int:
    return ModelFacts.of(config).head_dim


def effective_window(config) -> int | None:
    """The sliding window the model applies (Qwen2 configs carry one they do not use)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window or None


def _example_inputs(config, dtype):
    import torch

    batch, past, seq = 1, 3, 4  # batch 1 (fixed in the graph); past and seq distinct, neither 0 nor 1
    kv = (batch, config.num_key_value_heads, past, head_dim(config))
    return (
        torch.ones(batch, seq, dtype=torch.long),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past, past + seq).repeat(batch, 1),
        tuple(
            (torch.zeros(kv, dtype=dtype), torch.zeros(kv, dtype=dtype))
            for _ in range(config.num_hidden_layers)
        ),
    )


def _dynamic_axes(names) -> dict[str, dict[int, str]]:
    # Batch is 1: the graph's reshapes are written with constant sizes (see onnx_model).
    tokens = {1: "sequence_length"}
    axes = {"input_ids": tokens, "position_ids": tokens, "logits": tokens}
    axes["attention_mask"] = {1: "total_sequence_length"}
    axes.update({n: {2: "past_sequence_length"} for n in names["inputs"][3:]})
    axes.update({n: {2: "total_sequence_length"} for n in names["outputs"][1:]})
    return axes


# --- quantization ---------------------------------------------------------------------------------------------


def module_of(node) -> str | None:
    """The torch module name (``model.layers.0.mlp.up_proj``) an exported node came from.

    The exporter names nodes by module scope: ``/m/model/layers.0/mlp/up_proj/MatMul`` (``m`` is the wrapper's
    attribute).
    """
    parts = node.name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "m":
        return None
    return ".".join(parts[1:-1])


# --- onnxruntime-genai -------------------------------------------------------------------------------------


def genai_config(config, request: ExportRequest) -> dict:
    """onnxruntime-genai's config for the folder: the decoder's interface, sizes, special ids, search defaults."""
    gen = _generation_config(request)
    ids = request.special_ids()
    eos, bos = list(ids.eos), ids.bos
    pad = ids.pad if ids.pad is not None else eos[0]
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": MODEL_FILE,
        "head_size": head_dim(config),
        "hidden_size": config.hidden_size,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
    }
    window = effective_window(config)
    if window:
        # Recorded for runtimes; the graph applies the window itself over the full cache, so genai neither
        # slides the cache nor the inputs.
        decoder["sliding_window"] = {
            "window_size": window,
            "slide_key_value_cache": False,
            "slide_inputs": False,
        }
    search = {
        "diversity_penalty": 0.0,
        "do_sample": bool(gen.get("do_sample", False)),
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": request.max_seq_len,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": False,
        "repetition_penalty": float(gen.get("repetition_penalty", 1.0)),
        "temperature": float(gen.get("temperature", 1.0)),
        "top_k": int(gen.get("top_k", 50 if gen.get("do_sample") else 1)),
        "top_p": float(gen.get("top_p", 1.0)),
    }
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": request.max_seq_len,
            "decoder": decoder,
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad,
            "type": GENAI_MODEL_TYPES.get(config.model_type, config.model_type),
            "vocab_size": config.vocab_size,
        },
        "search": search,
    }


def _generation_config(request: ExportRequest) -> dict:
    path = request.tokenizer_files().get("generation_config.json")
    return json.loads(path.read_text()) if path else {}


def _details(config, recipe) -> dict:
    return {
        "opset": OPSET,
        "num_layers": config.num_hidden_layers,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": head_dim(config),
        "vocab_size": config.vocab_size,
        "kv_dtype": recipe.dtype,
        "sliding_window": effective_window(config),
        "inputs": io_names(config.num_hidden_layers)["inputs"],
        "outputs": io_names(config.num_hidden_layers)["outputs"],
    }
