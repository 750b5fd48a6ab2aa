"""Validate any edgepack config file, deciding what it is by its folder, then by its keys."""

from __future__ import annotations

import importlib
from pathlib import Path

from edgepack.config import read_data
from edgepack.errors import ConfigError

# kind -> (module, loader function, keys that identify the kind, folder name)
KINDS = {
    "recipe": ("edgepack.recipes", "load_recipe", {"rules", "lm_head", "embedding"}, "recipes"),
    "device": ("edgepack.devices", "load_device", {"ram_gb", "runtimes", "os"}, "devices"),
    "fallback": ("edgepack.fallback", "load_fallback", {"mode", "triggers", "endpoint"}, None),
    "matrix": ("edgepack.matrix", "load_matrix", {"models", "recipes", "targets"}, None),
}


def detect(path: Path) -> str:
    for kind, (_, _, _, folder) in KINDS.items():
        if folder and path.parent.name == folder:
            return kind
    data = read_data(path)
    if isinstance(data, dict):
        best = max(KINDS, key=lambda k: len(KINDS[k][2] & set(data)))
        if KINDS[best][2] & set(data):
            return best
    raise ConfigError(str(path), ["cannot tell what this file is; pass --kind recipe|device|fallback|matrix"])


def validate_file(path: Path, kind: str = "auto") -> str:
    """Load ``path`` as ``kind`` (or detect it); raise ConfigError with every problem. Returns the kind."""
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    kind = detect(path) if kind == "auto" else kind
    module, loader, _, _ = KINDS[kind]
    try:
        load = getattr(importlib.import_module(module), loader)
    except (ImportError, AttributeError):
        raise ConfigError(str(path), [f"{kind} files are not supported by this version of edgepack"]) from None
    load(path)
    return kind
