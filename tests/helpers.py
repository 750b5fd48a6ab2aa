"""Test helpers shared across test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def corrupt_tensor(files: list[Path], tensor: np.ndarray, scale: float = -3.0) -> Path:
    """Find ``tensor``'s raw bytes in one of ``files`` and overwrite them with the tensor times ``scale``.

    This corrupts exactly one weight tensor of a saved artifact, whatever its container format, as long as the
    format stores that tensor's bytes verbatim (fp32 exports do). Returns the file that was changed.
    """
    # Exporters store a linear weight as is or transposed (ONNX MatMul wants [in, out]).
    for layout in (tensor, tensor.T):
        needle = np.ascontiguousarray(layout).tobytes()
        replacement = np.ascontiguousarray(layout * scale).astype(tensor.dtype).tobytes()
        for path in files:
            data = path.read_bytes()
            at = data.find(needle)
            if at >= 0:
                path.write_bytes(data[:at] + replacement + data[at + len(needle):])
                return path
    raise AssertionError(f"tensor bytes not found in {[p.name for p in files]}")


def weight(checkpoint: Path, name: str) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(checkpoint / "model.safetensors"))[name]


def ensure_llama_cpp():
    """llama-cpp-python in this interpreter's environment, for the slow tier: installed from the wheel cached in
    $EDGEPACK_CACHE/wheels, which is built from source the first time (about 8 minutes on 2 cores)."""
    import importlib
    import os
    import subprocess
    import sys
    from importlib.util import find_spec

    import pytest

    from edgepack.backends.gguf import LLAMA_CPP, LLAMA_CPP_CMAKE_ARGS
    from edgepack.paths import cache_dir

    if find_spec("llama_cpp") is None:
        wheels = cache_dir() / "wheels"
        pip = [sys.executable, "-m", "pip", "-q"]
        built = list(wheels.glob("llama_cpp_python-0.3.36-*.whl"))
        steps = [] if built else [[*pip, "wheel", "--no-deps", "-w", str(wheels), LLAMA_CPP]]
        steps.append([*pip, "install", "--find-links", str(wheels), LLAMA_CPP])
        for step in steps:
            env = {**os.environ, "CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS}
            proc = subprocess.run(step, capture_output=True, text=True, check=False, env=env)
            if proc.returncode:
                pytest.fail(f"could not install {LLAMA_CPP}: {proc.stderr.strip().splitlines()[-1:]}")
        importlib.invalidate_caches()
    import llama_cpp

    return llama_cpp
