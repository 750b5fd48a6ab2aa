"""Runners for the .gguf: llama.cpp itself (llama-cpp-python) where it is installed, else the file read back with
``gguf``'s reader and its dequantized weights run in torch.

The torch reader takes nothing from the export but the file: it rebuilds the Hugging Face config from the GGUF's
keys (``config_from_gguf``), dequantizes each tensor with gguf's own block decoder, undoes the q/k row order and
Gemma's norm shift, and runs transformers' model with its KV cache. It checks the file's weights and hyper-
parameters, not llama.cpp's kernels: that is the llama.cpp runner's part (slow tier, where it is built).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.backends.gguf import LLAMA_CPP_CMAKE_ARGS
from edgepack.errors import ArtifactError, ParityError

# An fp32 export runs with an fp32 KV cache (llama.cpp's default is f16, which alone moves tiny models' logits by
# 1.5e-3, past the fp32 gate); the exporter tells users the flags (``FP32_CACHE``).
F32 = 0  # GGML_TYPE_F32
ENGINE_ENV = "EDGEPACK_GGUF_ENGINE"  # "llama.cpp" or "torch": which runner parity and bench open


def open_runner(export_root: Path, artifact, engine: str | None = None, **options):
    """llama.cpp when llama-cpp-python is importable (or ``engine``/$EDGEPACK_GGUF_ENGINE says so), else torch."""
    engine = engine or os.environ.get(ENGINE_ENV) or ("llama.cpp" if _has_llama_cpp() else "torch")
    if engine == "llama.cpp":
        return LlamaCppProcess(export_root, artifact, **options)
    if engine == "torch":
        return GGUFTorchRunner(export_root, artifact)
    raise ParityError(f"${ENGINE_ENV} must be llama.cpp or torch, got {engine!r}.")


def _has_llama_cpp() -> bool:
    from importlib.util import find_spec

    return find_spec("llama_cpp") is not None


class LlamaCppRunner:
    """The file in llama.cpp, every position's logits (``logits_all``), the KV cache kept across calls."""

    def __init__(self, path: Path, max_seq_len: int, weight_bits: int, threads: int | None = None):
        self.llm = _open_llama(Path(path), max_seq_len, weight_bits, threads)
        self.max_seq_len = max_seq_len
        self.reset()

    def reset(self) -> None:
        self.llm.reset()

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        n, start = len(tokens), self.llm.n_tokens
        if not 0 < n or start + n > self.max_seq_len:
            raise ParityError(f"llama.cpp runner: {start} + {n} tokens do not fit the export's "
                              f"{self.max_seq_len}-token context.")  # fmt: skip
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[start : start + n], dtype=np.float32)


def _open_llama(path: Path, n_ctx: int, weight_bits: int, threads: int | None):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ArtifactError(f"The gguf target runs in llama.cpp: make llama-cpp, or CMAKE_ARGS={LLAMA_CPP_CMAKE_ARGS!r} "
                            "pip install 'edgepack[llama-cpp]' (built from source: several minutes).") from None  # fmt: skip
    cache = {"type_k": F32, "type_v": F32} if weight_bits >= 32 else {}  # see F32 above
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                     n_threads=threads, n_threads_batch=threads, verbose=False, **cache)  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        raise ArtifactError(f"llama.cpp cannot load {path}: {exc}") from None


class LlamaCppProcess:
    """``LlamaCppRunner`` in a child process (``python -m edgepack.backends.gguf.runner``), driven over pipes.

    llama.cpp ends the whole process on a failed assertion or an illegal instruction (a ``-march=native`` build
    died with SIGILL here on AMX kernels; a Phi-3-named file without Phi-3's tokens aborts in vocabulary loading):
    in a child, that becomes an ArtifactError naming the cause, and the parity run goes on. The child's memory is
    its own: bench reads it with ``process_rss``."""

    def __init__(self, export_root: Path, artifact, threads: int | None = None, **_options):
        import subprocess
        import sys
        import tempfile
        import weakref

        self.max_seq_len = artifact.max_seq_len
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log)  # fmt: skip
        weakref.finalize(self, _stop, self.proc)
        self._call("open", str(Path(export_root) / artifact.path), artifact.max_seq_len, artifact.weight_bits, threads)

    def reset(self) -> None:
        self._call("reset")

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        return self._call("forward", [int(t) for t in tokens])

    def process_rss(self) -> tuple[int, int]:
        """(the child's RSS before it loaded the model, its peak RSS), bytes."""
        return self._call("rss")

    def _call(self, *message):
        import pickle

        try:
            pickle.dump(message, self.proc.stdin)
            self.proc.stdin.flush()
            status, value = pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            self.proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-1:]
            code = self.proc.returncode
            why = (" with SIGILL: this llama.cpp build uses instructions the machine refuses; rebuild llama-cpp-python "
                   f"with CMAKE_ARGS={LLAMA_CPP_CMAKE_ARGS!r}" if code == -4 else f" (exit {code}) {' '.join(tail)}")  # fmt: skip
            raise ArtifactError(f"llama.cpp's process ended{why}".strip()) from None
        if status == "error":
            kind, text = value
            raise {"ParityError": ParityError}.get(kind, ArtifactError)(text)
        return value


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _serve() -> None:
    """The child's loop: one pickled request in, one pickled (status, value) out. llama.cpp's own prints go to
    stderr: the protocol keeps the real stdout to itself."""
    import pickle
    import sys

    from edgepack.bench import own_rss

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    runner, baseline = None, 0
    while True:
        try:
            message = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        kind, args = message[0], message[1:]
        try:
            if kind == "open":
                baseline = own_rss("VmRSS")
                runner, value = LlamaCppRunner(*args), None
            elif kind == "forward":
                value = runner.forward(args[0])
            elif kind == "reset":
                value = runner.reset()
            elif kind == "rss":
                value = (baseline, own_rss("VmHWM"))
            else:
                return
            reply = ("ok", value)
        except (ArtifactError, ParityError) as exc:
            reply = ("error", (type(exc).__name__, str(exc)))
        pickle.dump(reply, out)
        out.flush()


class GGUFTorchRunner:
    """The file's dequantized weights in transformers' model of the architecture its keys describe."""

    host_note = "llama.cpp not installed here: the file's dequantized weights ran in torch (edgepack[llama-cpp])"

    def __init__(self, export_root: Path, artifact):
        path = Path(export_root) / artifact.path
        self.model = load_gguf_model(path)
        self.max_seq_len = artifact.max_seq_len
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        n = len(tokens)
        if not 0 < n or self.position + n > self.max_seq_len:
            raise ParityError(f"gguf runner: {self.position} + {n} tokens do not fit the export's "
                              f"{self.max_seq_len}-token context.")  # fmt: skip
        ids = torch.tensor([list(tokens)])
        positions = torch.arange(self.position, self.position + n)[None]
        with torch.no_grad():
            out = self.model(input_ids=ids, position_ids=positions, cache_position=positions[0],
                             past_key_values=self.cache, use_cache=True)  # fmt: skip
        self.position += n
        return out.logits[0].float().numpy()


def load_gguf_model(path: Path):
    """transformers' model rebuilt from the .gguf alone: config from its keys, weights dequantized."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"gguf cannot read {path}: {exc}") from None
    config, arch = config_from_gguf(reader)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    state = _state_dict(reader, model, config, arch)
    model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    missing = [n for n, p in model.state_dict().items() if p.is_meta and not n.endswith("inv_freq")]
    if missing:
        raise ArtifactError(f"{path} lacks tensors for {', '.join(missing[:4])}")
    _reinit_buffers(model)
    _apply_rope_freqs(reader, model)
    return model.eval()


def _apply_rope_freqs(reader, model) -> None:
    """llama.cpp divides each rope frequency by ``rope_freqs`` (Llama 3's scaling): the rebuilt default rope does
    the same."""
    import torch

    factors = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if factors is None:
        return
    rotary = next(m for m in model.modules() if hasattr(m, "inv_freq"))
    rotary.inv_freq = rotary.inv_freq / torch.from_numpy(np.array(factors.data, dtype=np.float32))
    rotary.original_inv_freq = rotary.inv_freq


def _reinit_buffers(model) -> None:
    """Buffers were created on the meta device with the model: rotary modules are built again on the CPU from
    their config, a scaled embedding's scale set from its scalar."""
    import torch

    meta = {name.rpartition(".")[0] for name, b in model.named_buffers() if b.is_meta}
    for name in meta:
        module = model.get_submodule(name)
        if hasattr(module, "scalar_embed_scale"):
            module.embed_scale = torch.tensor(module.scalar_embed_scale)
        else:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, type(module)(config=module.config))


def _fields(reader) -> dict:
    """Key -> Python value for every scalar, string and short array key."""
    out = {}
    for name, field in reader.fields.items():
        try:
            out[name] = field.contents()
        except (ValueError, IndexError):
            continue
    return out


def config_from_gguf(reader):
    """(transformers config, GGUFArch) from the file's keys: what llama.cpp would read, nothing else."""
    from transformers import AutoConfig

    from edgepack.backends.gguf.arch import BY_NAME

    kv = _fields(reader)
    name = kv["general.architecture"]
    if name not in BY_NAME:
        raise ArtifactError(f"The gguf runner reads edgepack's architectures, not {name!r}.")
    arch = BY_NAME[name]
    a = lambda key, default=None: kv.get(f"{name}.{key}", default)  # noqa: E731
    tensors = {t.name: t for t in reader.tensors}
    head_dim = a("attention.key_length")
    fields = {
        "hidden_size": a("embedding_length"), "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"), "num_attention_heads": a("attention.head_count"),
        "num_key_value_heads": a("attention.head_count_kv"), "head_dim": head_dim,
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon"), "max_position_embeddings": a("context_length"),
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_parameters": _rope_parameters(a, arch),
        "bos_token_id": kv.get("tokenizer.ggml.bos_token_id"), "eos_token_id": kv.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": kv.get("tokenizer.ggml.padding_token_id"),
    }  # fmt: skip
    if arch.model_type == "llama":
        fields["attention_bias"] = "blk.0.attn_q.bias" in tensors
    if arch.model_type == "phi3":
        rotary = a("rope.dimension_count", head_dim)
        fields["partial_rotary_factor"] = rotary / head_dim
    if arch.softcaps:
        fields["attn_logit_softcapping"] = a("attn_logit_softcapping")
        fields["final_logit_softcapping"] = a("final_logit_softcapping")
    elif a("final_logit_softcapping") is not None:
        fields["final_logit_softcapping"] = a("final_logit_softcapping")
    if arch.norm_shift:
        fields["query_pre_attn_scalar"] = head_dim
    fields.update(_windows(a, arch, fields["num_hidden_layers"]))
    return AutoConfig.for_model(arch.model_type, **fields), arch


def _rope_parameters(a, arch) -> dict:
    params = {"rope_type": "default", "rope_theta": a("rope.freq_base", 10000.0)}
    kind = a("rope.scaling.type")
    if kind == "linear":
        params.update(rope_type="linear", factor=a("rope.scaling.factor"))
    elif kind == "yarn":
        params.update(rope_type="yarn", factor=a("rope.scaling.factor"),
                      original_max_position_embeddings=a("rope.scaling.original_context_length"))  # fmt: skip
        for key, name in (("beta_fast", "rope.scaling.yarn_beta_fast"), ("beta_slow", "rope.scaling.yarn_beta_slow")):
            if a(name) is not None:
                params[key] = a(name)
        if a("rope.scaling.yarn_log_multiplier") is not None:
            params["mscale"] = params["mscale_all_dim"] = a("rope.scaling.yarn_log_multiplier")
        if a("attention.temperature_scale") is not None:
            params["llama_4_scaling_beta"] = a("attention.temperature_scale")
    if a("rope.freq_base_swa") is not None:  # Gemma 3: rope per layer kind
        return {"full_attention": params, "sliding_attention": {"rope_type": "default", "rope_theta": a("rope.freq_base_swa")}}
    return params


def _windows(a, arch, layers: int) -> dict:
    window = a("attention.sliding_window")
    pattern = a("attention.sliding_window_pattern")
    if not window or not arch.windows:
        return {"sliding_window": None} if arch.model_type in ("llama", "qwen2", "phi3") else {}
    sliding = list(pattern) if isinstance(pattern, list) else [True] * layers
    return {"sliding_window": window,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding]}  # fmt: skip


def _state_dict(reader, model, config, arch) -> dict:
    import torch
    from gguf.quants import dequantize

    from edgepack.backends.gguf.blocks import unpermute_rows
    from edgepack.backends.gguf.exporter import _name_map

    names = _name_map(arch, config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    state = {}
    for name in model.state_dict():
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target not in tensors:
            continue
        t = tensors[target]
        value = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        rows = heads.get(name.rpartition(".")[0].rpartition(".")[2]) if arch.permute_qk else None
        if rows:
            value = unpermute_rows(value, rows)
        if arch.norm_shift and name.endswith("norm.weight"):
            value = value - arch.norm_shift
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    return state


if __name__ == "__main__":
    _serve()
