"""Describe a checkpoint without loading its weights (``edgepack inspect``)."""

from __future__ import annotations

from edgepack.checkpoint import resolve
from edgepack.backends import get_exporter, target_names
from edgepack.recipes import available, load_recipe


def describe(model: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict:
    from edgepack.pipeline import checkpoint_record

    checkpoint = resolve(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    info = checkpoint_record(checkpoint).model_dump()
    info["tokenizer"] = _tokenizer(checkpoint)
    recipes = [load_recipe(n) for n in available()]
    info["targets"] = {
        t: {r.name: get_exporter(t).unhonoured(r) for r in recipes} for t in target_names()
    }
    return info


def _tokenizer(checkpoint) -> dict:
    from edgepack.checkpoint import require_tokenizer
    from edgepack.checkpoint import NATIVE_FILES

    require_tokenizer(checkpoint)
    files = sorted(set(checkpoint.tokenizer_files) | {n for n in NATIVE_FILES if (checkpoint.path / n).is_file()})
    source = next((n for n in NATIVE_FILES if n in files), "tokenizer.json")
    source = {"tekken.json": "tekken", "tokenizer.model": "sentencepiece"}.get(source, source)
    if "tokenizer.json" not in files:  # converted at export (edgepack.tokenizer_package)
        return {"source": source, "files": files, "chat_template": source == "tekken", "bos_id": None, "eos_ids": []}
    from edgepack.tokenizer import DeviceTokenizer

    tok = DeviceTokenizer(checkpoint.path)
    return {"source": source, "files": files, "chat_template": bool(tok.chat_template), "bos_id": tok.token_id("bos"),
            "eos_ids": tok.eos_ids}


def rope_summary(rope: dict) -> str:
    """One line: the rope type and what scales it (``inspect``)."""
    parts = [f"factor {rope['factor']}"] if rope.get("factor") else []
    if rope.get("original_max_position_embeddings"):
        parts.append(f"original {rope['original_max_position_embeddings']}")
    if rope.get("llama_4_scaling_beta"):
        parts.append(f"llama-4 query scaling {rope['llama_4_scaling_beta']}")
    if not parts and rope.get("rope_theta"):
        parts.append(f"theta {rope['rope_theta']}")
    return f"{rope['rope_type']} ({', '.join(parts)})" if parts else rope["rope_type"]


def window_layout(layer_types: list[str] | None, window: int | None) -> str | None:
    """Per-layer attention when layers differ, e.g. "8 (layers 0, 1, 2), full (layer 3)"; None when uniform."""
    if not layer_types or len(set(layer_types)) < 2:
        return None
    groups: dict[str, list[int]] = {}
    for i, kind in enumerate(layer_types):
        groups.setdefault(str(window) if kind == "sliding_attention" and window else "full", []).append(i)
    return ", ".join(f"{k} (layer{'s' if len(v) > 1 else ''} {', '.join(map(str, v))})" for k, v in groups.items())
