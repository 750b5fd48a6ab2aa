"""One tiny fp32 ONNX export (with parity) per test session, shared by test_bench and test_report."""

from __future__ import annotations

from pathlib import Path

_built: dict[Path, Path] = {}


def tiny_onnx_export(tmp_path_factory, checkpoint: Path) -> Path:
    from edgepack.pipeline import export

    if checkpoint not in _built:
        out = tmp_path_factory.mktemp("bench") / "tiny-fp32"
        export(checkpoint, out=out, recipe="fp32", targets=["onnx"], parity_options={"decode_steps": 2})
        _built[checkpoint] = out
    return _built[checkpoint]
