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
