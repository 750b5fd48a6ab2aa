"""Describe a checkpoint without loading its weights (``edgepack inspect``)."""

from __future__ import annotations

from edgepack.checkpoint import resolve
from edgepack.exporters import get_exporter, target_names
from edgepack.recipes import available, load_recipe


def describe(model: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict:
    from edgepack.pipeline import checkpoint_record

    checkpoint = resolve(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    info = checkpoint_record(checkpoint)
    info["tokenizer"] = _tokenizer(checkpoint)
    recipes = [load_recipe(n) for n in available()]
    info["targets"] = {
        t: {r.name: get_exporter(t).unhonoured(r) for r in recipes} for t in target_names()
    }
    return info


def _tokenizer(checkpoint) -> dict:
    files = sorted(checkpoint.tokenizer_files)
    if "tokenizer.json" not in files:
        return {"files": files, "chat_template": False, "bos_id": None, "eos_ids": []}
    from edgepack.tokenizer import DeviceTokenizer

    tok = DeviceTokenizer(checkpoint.path)
    return {"files": files, "chat_template": bool(tok.chat_template), "bos_id": tok.token_id("bos"),
            "eos_ids": tok.eos_ids}
