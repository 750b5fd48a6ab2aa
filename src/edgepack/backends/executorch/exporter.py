"""The ExecuTorch target: an XNNPACK ``.pte`` with an in-place KV cache, in the layout the ExecuTorch LLM runner reads.

Stages: quantize per recipe (``quantize``, torchao) -> wrap the model over ExecuTorch's LLM ops
(``model``: in-place cache update, fused causal SDPA) -> ``torch.export`` ->
``to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``to_executorch`` -> ``model.pte``.

Program interface: ``forward(input_ids [1, n], cache_position [n]) -> logits [1, n, vocab]``, where n is 1..
``request.prefill_chunk`` (128 by default): a prompt is prefilled in chunks, decoding feeds one token at a time.
Bounding n bounds the activations ExecuTorch's memory planner reserves (it plans for the largest n: with n up to
max_seq_len, SmolLM2's logits alone would take 400 MB at 2048 positions). The KV cache lives in mutable
buffers the memory planner places in the method's planned memory; they are not serialized (the serializer stores
identical zero blobs once, so that saved one buffer: 1.6 MB of SmolLM2's .pte at 2048 positions, measured), as in
ExecuTorch's own ``export_llm``: the runtime's ``Module``
allocates planned memory zero-filled, and a runner with its own allocator must zero it too (the fused SDPA
multiplies not-yet-written cache rows by zero weights, so garbage there could be NaN). A sliding window is applied
by a mask over the full-length cache. Constant methods carry what the runner needs (``constant_methods``), with the LLM
runner's meaning: ``get_max_seq_len`` is the most tokens per call, ``get_max_context_len`` the cache length.

Weights past ``EXTERNAL_DATA_BYTES`` (a 4B model's) go to ``model.ptd`` beside the program (executorch#1858: a
flatbuffer cannot pass 2 GiB): every constant, delegated (XNNPACK's packed weights) or not (the quantized
embedding), is tagged for one external file, where identical blobs are stored once (the tied embedding and
lm_head). Load it with ``Runtime.load_program(pte, data_path=ptd)`` or the LLM runner's ``data_path``.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from pathlib import Path

from edgepack.errors import ExportError
from edgepack.facts import ModelFacts
from edgepack.backends import Artifact, ExportRequest, heartbeat
from edgepack.backends.executorch import BACKEND

PTE_FILE = "model.pte"
PTD_FILE = "model.ptd"
EXTERNAL_DATA_BYTES = 1_800_000_000  # estimated weight bytes past which they go to model.ptd (2 GiB, with room)
MIN_RUNTIME = "executorch 1.5"
# XNNPACK lowering, measured on a 2-core x86 host: ~13 s per decoder layer for SmolLM2 (30 layers) and ~15 s for
# Ministral 3 3B (26) with symmetric codes; ~32 s per layer since asymmetric codes add a correction linear per
# linear (SmolLM2 cut to 6 layers: 193 s; the whole model: over 1,000 s, 2026-12-02). Its time follows the node
# count (ExecuTorch's passes re-trace every partition with fake tensors), not the weights' size.
LOWER_S_PER_LAYER = 14.0
LOWER_S_PER_LAYER_ZERO_POINTS = 32.0
EXAMPLE_LEN = 2  # example prefill length for tracing (not 0 or 1, which torch.export specializes on)


class ExecuTorchExporter:
    backend = BACKEND

    def unhonoured(self, recipe) -> list[str]:
        """Recipe settings this backend cannot honour, one line each with what is done instead."""
        from edgepack.backends.executorch.quantize import unhonoured

        return unhonoured(recipe)

    def interface(self, artifact: Artifact) -> dict | None:
        d = artifact.details
        if "inputs" not in d:
            return None  # an artifact.json from before the names were recorded
        cache = d.get("kv_cache", {})
        dtype = (d.get("outputs") or [{}])[0].get("dtype", "float32")
        return {
            "inputs": d.get("inputs", []),
            "outputs": d.get("outputs", []),
            # inside the program, one buffer per layer (k_cache_0, ...), in planned memory the runtime zero-fills
            "states": [{"name": f"{b}_<layer>", "dtype": dtype,
                        "shape": [1, cache.get("positions"), "num_kv_heads", "head_dim"]}
                       for b in cache.get("buffers", [])],
            "tokenizer": "tokenizer/tokenizer.json",
        }  # fmt: skip

    def export(self, model, request: ExportRequest) -> Artifact:
        from edgepack.backends.executorch.quantize import quantize_model

        start = time.perf_counter()
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        recipe = request.recipe
        request.progress(f"quantizing per recipe {recipe.name}")
        unhonoured = quantize_model(model, recipe, request.codes_of)
        metadata = constant_methods(model.config, request)
        external = weights_outside(model.config, recipe)
        request.progress(f"torch.export with a KV cache of {request.max_seq_len} positions")
        program = export_program(model, request.max_seq_len, prefill_chunk(request))
        estimate = _lowering_estimate(model.config, recipe)
        request.progress(f"lowering to XNNPACK (the slow stage: ~{estimate / 60:.0f} min on 2 cores)"
                         + (f", weights to {PTD_FILE}" if external else ""))  # fmt: skip
        with heartbeat(request.progress, "lowering to XNNPACK", estimate):
            size = lower_to_pte(program, metadata, out / PTE_FILE, external=external)
        files = [PTE_FILE, PTD_FILE] if external else [PTE_FILE]
        return request.artifact(
            self.backend,
            PTE_FILE,
            files,
            min_runtime=MIN_RUNTIME,
            export_seconds=time.perf_counter() - start,
            unhonoured=unhonoured,
            details=_details(model.config, request, metadata, size, external),
        )


def _lowering_estimate(config, recipe) -> float:
    """Seconds XNNPACK's lowering is expected to take on a 2-core host (what the heartbeat says)."""
    zero_points = any(not q.is_float and not q.symmetric for q in _quants(recipe))
    per_layer = LOWER_S_PER_LAYER_ZERO_POINTS if zero_points else LOWER_S_PER_LAYER
    return per_layer * config.get_text_config().num_hidden_layers


def prefill_chunk(request: ExportRequest) -> int:
    return max(EXAMPLE_LEN, min(request.prefill_chunk, request.max_seq_len - 1))


def export_program(model, max_seq_len: int, chunk: int):
    """``torch.export`` the model over its in-place cache, with a dynamic sequence dim of 1..``chunk``."""
    import torch

    from edgepack.backends.executorch.model import CausalLMWithCache

    if max_seq_len <= EXAMPLE_LEN:
        raise ExportError(f"ExecuTorch needs --max-seq-len {EXAMPLE_LEN + 1} or more, got {max_seq_len}.")
    wrapper = CausalLMWithCache(model, max_seq_len).eval()
    seq = torch.export.Dim("seq", min=1, max=chunk)
    example = (torch.zeros((1, EXAMPLE_LEN), dtype=torch.long), torch.arange(EXAMPLE_LEN, dtype=torch.long))
    try:
        with torch.no_grad():
            # Non-strict: the cache object and the registered attention function are plain Python, which
            # non-strict tracing runs as is.
            return torch.export.export(wrapper, example, dynamic_shapes=({1: seq}, {0: seq}), strict=False)
    except Exception as exc:  # torch.export raises many types; name the stage and the cause
        raise ExportError(f"torch.export of {type(model).__name__} failed: {type(exc).__name__}: {exc}") from exc


def weights_outside(config, recipe) -> bool:
    """Whether the quantized weights (estimated from the config and recipe) are too large for the .pte."""
    from edgepack.memory import weight_bytes

    estimate = weight_bytes(ModelFacts.of(config), recipe, float_zero_points=True)
    return estimate.total > EXTERNAL_DATA_BYTES


def _tag_constants(graph_module) -> None:
    """Tag every placeholder for ``model.ptd``: XNNPACK reads the tag on the constants it packs, and ignores it on
    the program's inputs and the KV cache (neither is a constant it serializes)."""
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = Path(PTD_FILE).stem


def lower_to_pte(program, metadata: dict, path: Path, external: bool = False) -> int:
    """Lower to XNNPACK, serialize (the KV cache as planned memory, no contents), write ``path`` (and ``model.ptd``
    beside it when ``external``); return the .pte's size in bytes."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS, GeluConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    # XNNPACK computes erf GELU even for approximate="tanh" (Gemma's gelu_pytorch_tanh: 5e-4 off, measured);
    # the portable kernel honours the approximation.
    partitioner = XnnpackPartitioner(configs=[c for c in ALL_PARTITIONER_CONFIGS if c is not GeluConfig])
    try:
        with _preprocess_shares_weights():
            edge = to_edge_transform_and_lower(
                program,
                transform_passes=[_tag_constants] if external else None,
                partitioner=[partitioner],
                constant_methods=metadata,
            )
        # Quant fusion turns torchao's dequantize+embedding into ExecuTorch's quantized embedding kernels.
        config = ExecutorchBackendConfig(
            do_quant_fusion_and_const_prop=True,
            external_constants=(lambda node: Path(PTD_FILE).stem) if external else False,
        )
        et = edge.to_executorch(config)
        del edge
    except Exception as exc:  # lowering raises many types; name the stage and the cause
        raise ExportError(f"ExecuTorch lowering failed: {type(exc).__name__}: {exc}") from exc
    with path.open("wb") as fh:
        et.write_to_file(fh)
    if external:
        et.write_tensor_data_to_file(str(path.parent))
    return path.stat().st_size


@contextmanager
def _preprocess_shares_weights():
    """Lower without a second copy of the weights: ExecuTorch deep-copies every partition's program, weights
    included, before XNNPACK preprocesses any of them (``lower_all_submodules_to_backend``): at 4B, 3.9 GB more at
    once. XNNPACK reads the weights and writes packed copies of its own, so its programs may share them."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    def copy_sharing_weights(cls, edge_program, compile_specs):
        weights = (*edge_program.state_dict.values(), *edge_program.constants.values())
        return copy.deepcopy(edge_program, {id(t): t for t in weights})

    own = XnnpackBackend.__dict__.get("copy_exported_program_for_preprocess")  # None: it inherits the deep copy
    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(copy_sharing_weights)
    try:
        yield
    finally:
        if own is None:
            del XnnpackBackend.copy_exported_program_for_preprocess
        else:
            XnnpackBackend.copy_exported_program_for_preprocess = own


def constant_methods(config, request: ExportRequest) -> dict:
    """The constant methods the ExecuTorch LLM runner (and edgepack's runner) read from the program."""
    text = config.get_text_config()
    ids = request.special_ids()
    bos, eos = ids.bos, list(ids.eos)
    methods = {
        "get_max_seq_len": prefill_chunk(request),
        "get_max_context_len": request.max_seq_len,
        "get_vocab_size": int(text.vocab_size),
        "get_n_layers": int(text.num_hidden_layers),
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "use_sdpa_with_kv_cache": True,
        "get_eos_ids": eos,
    }
    if bos is not None:
        methods["get_bos_id"] = bos
    window = ModelFacts.of(text).sliding_window
    if window:
        methods["get_sliding_window"] = int(window)
    return methods


def _details(config, request: ExportRequest, metadata: dict, size: int, external: bool) -> dict:
    from edgepack.backends.executorch.model import CACHE_BUFFERS

    text = config.get_text_config()
    max_chunk = prefill_chunk(request)
    return {
        "backend": "xnnpack",
        "pte_bytes": size,
        # the weights' file, for Runtime.load_program(pte, data_path=...) and the LLM runner's data_path
        "data_file": PTD_FILE if external else None,
        "data_bytes": (request.out_dir / PTD_FILE).stat().st_size if external else 0,
        "method": "forward",
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [1, "n"]},
            {"name": "cache_position", "dtype": "int64", "shape": ["n"]},
        ],
        "outputs": [{"name": "logits", "dtype": request.recipe.dtype, "shape": [1, "n", int(text.vocab_size)]}],
        "max_chunk": max_chunk,
        "prefill_chunk": max_chunk,
        "kv_cache": {
            "positions": request.max_seq_len,
            "layout": "[1, positions, kv_heads, head_dim]",
            "serialized": False,  # planned memory, zero-filled at load by the runtime's Module
            "zero_filled_by": "runtime",
            "buffers": list(CACHE_BUFFERS),
        },
        "constant_methods": metadata,
        "needs_quantized_kernels": any(not q.is_float for q in _quants(request.recipe)),
    }


def _quants(recipe):
    sections = [recipe.embedding, recipe.lm_head, *(rule.weights for rule in recipe.rules)]
    return [q for q in sections if q is not None]
