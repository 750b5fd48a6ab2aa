"""What llama.cpp calls each edgepack architecture, and the hyper-parameters it reads, written as llama.cpp's own
converter (convert_hf_to_gguf.py, conversion/*.py) writes them. The reader (``runner.config_from_gguf``) rebuilds
a Hugging Face config from the same keys, so a key the writer forgets fails parity instead of passing silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.errors import ExportError


@dataclass(frozen=True)
class GGUFArch:
    name: str  # llama.cpp's architecture (general.architecture)
    model_type: str  # the Hugging Face model_type the reader rebuilds
    permute_qk: bool = False  # llama.cpp applies rope to interleaved pairs: q/k rows reordered (LLAMA_ROPE_TYPE_NORM)
    norm_shift: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w: written w + 1
    windows: bool = False  # llama.cpp applies per-layer sliding windows for this architecture
    softcaps: bool = False  # attention and final logit soft-capping keys (Gemma 2)


ARCHS = {
    "llama": GGUFArch("llama", "llama", permute_qk=True),
    "mistral": GGUFArch("llama", "llama", permute_qk=True),  # llama.cpp's converter maps Mistral to llama
    "ministral": GGUFArch("llama", "llama", permute_qk=True),  # llama.cpp has no Ministral 8B layout: no windows
    "ministral3": GGUFArch("mistral3", "ministral3", permute_qk=True),
    "qwen2": GGUFArch("qwen2", "qwen2"),
    "qwen3": GGUFArch("qwen3", "qwen3"),
    "phi3": GGUFArch("phi3", "phi3"),  # llama.cpp turns Phi-3's sliding window off (llama.cpp PR 13676)
    "gemma2": GGUFArch("gemma2", "gemma2", norm_shift=1.0, windows=True, softcaps=True),
    "gemma3_text": GGUFArch("gemma3", "gemma3_text", norm_shift=1.0, windows=True),
}
BY_NAME = {a.name: a for a in ARCHS.values()}  # the reader's way back (llama: Mistral and Ministral run as Llama)


def arch_for(model_type: str) -> GGUFArch:
    if model_type not in ARCHS:
        raise ExportError(
            f"The gguf target has no llama.cpp layout for model_type {model_type!r} yet "
            f"(supported: {', '.join(sorted(ARCHS))}). Export another target."
        )
    return ARCHS[model_type]


def hparams(config, facts, arch: GGUFArch, max_seq_len: int) -> list[tuple[str, str, object]]:
    """(writer method, description, value) for every hyper-parameter llama.cpp reads for this model;
    ExportError where llama.cpp would compute something else than the reference."""
    head_dim = facts.head_dim
    rope_dim = int(head_dim * (getattr(config, "partial_rotary_factor", None) or 1.0))
    out = [
        ("add_context_length", "context", _context(config, facts, arch, max_seq_len)),
        ("add_embedding_length", "hidden size", config.hidden_size),
        ("add_block_count", "layers", config.num_hidden_layers),
        ("add_feed_forward_length", "MLP width", config.intermediate_size),
        ("add_head_count", "heads", config.num_attention_heads),
        ("add_head_count_kv", "KV heads", getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        ("add_key_length", "head dim", head_dim),
        ("add_value_length", "head dim", head_dim),
        ("add_rope_dimension_count", "rotary dims", rope_dim),
        ("add_layer_norm_rms_eps", "RMSNorm eps", config.rms_norm_eps),
        ("add_vocab_size", "vocabulary", config.vocab_size),
    ]
    out += _rope(config, arch)
    if arch.softcaps:
        out += [("add_attn_logit_softcapping", "attention soft-cap", config.attn_logit_softcapping),
                ("add_final_logit_softcapping", "final soft-cap", config.final_logit_softcapping)]  # fmt: skip
    elif getattr(config, "final_logit_softcapping", None):
        out.append(("add_final_logit_softcapping", "final soft-cap", config.final_logit_softcapping))
    if arch.windows and any(facts.windows):
        window = next(w for w in facts.windows if w)
        out += [("add_sliding_window", "window", window),
                ("add_sliding_window_pattern", "sliding layers", [bool(w) for w in facts.windows])]  # fmt: skip
    if arch.norm_shift:  # llama.cpp scales Gemma's queries by head_dim ** -0.5 (27B aside), whatever the config says
        scalar = getattr(config, "query_pre_attn_scalar", head_dim)
        if scalar != head_dim:
            raise ExportError(
                f"This model scales attention by query_pre_attn_scalar {scalar}, llama.cpp by its head dim "
                f"{head_dim}: the gguf target cannot carry it. Export another target."
            )
    return out


def _context(config, facts, arch: GGUFArch, max_seq_len: int) -> int:
    """The model's trained context; where llama.cpp cannot apply the model's windows, at most the window, and
    ExportError if --max-seq-len asks for more."""
    windows = [w for w in facts.windows if w]
    trained = int(getattr(config, "max_position_embeddings", max_seq_len))
    if not windows or arch.windows:
        return trained
    window = min(windows)
    if max_seq_len > window:
        raise ExportError(
            f"{len(windows)} of this model's {len(facts.windows)} layers attend within a window of {window} tokens; "
            f"llama.cpp applies no window for its {arch.name} architecture. Export gguf with --max-seq-len {window} "
            "or less (within the window every layer sees every position)."
        )
    return min(trained, window)


def _rope(config, arch: GGUFArch) -> list[tuple[str, str, object]]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "full_attention" in params or "sliding_attention" in params:  # per layer kind (Gemma 3)
        local = params.get("sliding_attention") or {}
        params = dict(params.get("full_attention") or {})
        if "rope_theta" in local:
            params["rope_theta_swa"] = local["rope_theta"]
    out = [("add_rope_freq_base", "rope theta", params.get("rope_theta", 10000.0))]
    if "rope_theta_swa" in params:
        out.append(("add_rope_freq_base_swa", "local rope theta", params["rope_theta_swa"]))
    kind = params.get("rope_type", "default")
    if kind in ("default", "llama3"):  # llama3: the per-frequency factors travel as a tensor (``rope_freqs``)
        return out
    if kind == "linear":
        from gguf import RopeScalingType

        return out + [("add_rope_scaling_type", "rope scaling", RopeScalingType.LINEAR),
                      ("add_rope_scaling_factor", "rope factor", params["factor"])]  # fmt: skip
    if kind == "yarn":
        return out + _yarn(params, arch)
    raise ExportError(f"The gguf target does not write rope type {kind!r} yet. Export another target.")


def _yarn(params: dict, arch: GGUFArch) -> list[tuple[str, str, object]]:
    from gguf import RopeScalingType

    out = [("add_rope_scaling_type", "rope scaling", RopeScalingType.YARN),
           ("add_rope_scaling_factor", "rope factor", params["factor"]),
           ("add_rope_scaling_orig_ctx_len", "rope original context", params["original_max_position_embeddings"])]  # fmt: skip
    for key, method in (("beta_fast", "add_rope_scaling_yarn_beta_fast"),
                        ("beta_slow", "add_rope_scaling_yarn_beta_slow")):  # fmt: skip
        if params.get(key) is not None:
            out.append((method, key, params[key]))
    if arch.name == "mistral3":  # conversion/mistral3.py: YaRN's log multiplier and Llama 4's query scaling
        if params.get("mscale", 1.0) != params.get("mscale_all_dim", 1.0):
            raise ExportError("llama.cpp's mistral3 carries one YaRN mscale; this model has two different ones. "
                              "Export another target.")  # fmt: skip
        out.append(("add_rope_scaling_yarn_log_mul", "YaRN mscale", params.get("mscale_all_dim", 1.0)))
        if params.get("llama_4_scaling_beta") is not None:
            out.append(("add_attn_temperature_scale", "Llama-4 query scaling", params["llama_4_scaling_beta"]))
    return out


def rope_freqs(config, head_dim: int):
    """Llama 3's rope as llama.cpp takes it: a ``rope_freqs`` tensor of per-frequency divisors (convert_hf_to_gguf's
    ``LlamaModel.generate_extra_tensors``), or None for any other rope."""
    import math

    import numpy as np

    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type") != "llama3":
        return None
    base, factor = params.get("rope_theta", 10000.0), params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    context = params.get("original_max_position_embeddings", 8192)
    out = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
