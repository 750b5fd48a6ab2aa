"""GGUF input: dequantize a .gguf file into a cached Hugging Face folder, once.

transformers reads GGUF (``gguf_file=``) and dequantizes to float, but refuses to ``save_pretrained`` the
result, so the weights are moved into a fresh model built from the same config and saved as safetensors. The
cache is keyed by the file's sha256, so an edited file converts again.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from edgepack.errors import CheckpointError
from edgepack.paths import cache_dir, sha256_file


def convert_gguf(path: Path, dtype: str = "bfloat16") -> Path:
    """The cached HF folder for ``path``, converting it on first use."""
    out = cache_dir() / "gguf" / sha256_file(path)[:16]
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp, dtype)
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, EOFError, struct.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"Could not read GGUF file {path}: {exc}") from None
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _convert(path: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    config.dtype = dtype
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    del loaded
    out.mkdir(parents=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out)
    try:
        GenerationConfig.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    except (OSError, ValueError):
        GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
        ).save_pretrained(out)
