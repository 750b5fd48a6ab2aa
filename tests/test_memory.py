"""Memory bounds of the stages that hold weights, on a ~200 MB bf16 checkpoint (each measured in a fresh process:
its peak resident memory above what it held after importing the libraries).

A stage that copied the model whole (a float32 cast, a second state dict, a graph holding every weight) would pass
2x the checkpoint; these stream tensor by tensor (``edgepack.weights``, ``exporters/onnx_weights``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STAGE = r"""
import json, sys
from pathlib import Path
import torch, transformers, onnx, onnxruntime, coremltools  # noqa: F401 - imported before the baseline
from edgepack.checkpoint import resolve
from edgepack.backends import ExportRequest, get_exporter
from edgepack.recipes import load_recipe
from edgepack.weights import load_layer_streamed

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

stage, model, out = sys.argv[1:4]
checkpoint = resolve(model)
checkpoint.num_parameters, checkpoint.weights_digest  # header reads, not the stage
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark from here on: what the stage adds
base = status("VmRSS:")
if stage == "load":
    m = checkpoint.load_model()
elif stage == "onnx":
    request = ExportRequest(checkpoint, load_recipe("int4-block32"), 64, Path(out))
    get_exporter("onnx").export(checkpoint.load_model(), request)
elif stage == "coreml":
    request = ExportRequest(checkpoint, load_recipe("int4-block32-rtn"), 64, Path(out))
    get_exporter("coreml").export(checkpoint.load_model(), request)
elif stage == "reference":
    m = load_layer_streamed(checkpoint, "float32", "eager", resident_bytes=0)
    with torch.no_grad():
        m(torch.randint(5, 300, (1, 32)))
print(json.dumps({"delta": status("VmHWM:") - base}))
"""


@pytest.fixture(scope="module")
def sizes(tmp_path_factory) -> dict[int, Path]:
    """Llamas of 3 and 12 layers (hidden 1024, bf16: ~100 and ~300 MB): the slope between them is what the stage
    holds per byte of weights, free of the libraries' fixed overhead."""
    from edgepack.tiny import build_tiny_checkpoint

    return {
        layers: build_tiny_checkpoint(
            "llama", tmp_path_factory.mktemp(f"medium{layers}"), dtype="bfloat16", vocab_size=16384,
            hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers, num_attention_heads=16,
            num_key_value_heads=4, head_dim=64,
        )
        for layers in (3, 12)
    }  # fmt: skip


def _peak_above_baseline(stage: str, model: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", STAGE, stage, str(model), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["delta"]


@pytest.mark.parametrize("stage, bound", [("load", 0.5), ("onnx", 1.25), ("coreml", 1.5), ("reference", 0.5)])
def test_stage_never_holds_two_copies_of_the_weights(sizes, tmp_path, stage, bound):
    """Peak memory per byte of checkpoint. load: tensors are assigned, not copied (measured ~0.0). onnx: the bf16
    model while its weights are written, then the int4 file read back to inline it (measured 0.89, three runs; 1.55
    to 2.11 before ``edgepack.allocator`` fixed glibc's mmap threshold; a float32 cast alone would add 2.0).
    coreml: the program converted around stand-ins, each bf16 weight released once compressed (measured 0.22;
    1.1 while every weight stayed referenced to the end, 2.1 while the fp16 pass cast every stand-in to a full
    array). reference: one module at a time in float32
    (measured ~0.0 per byte: a fixed ~300 MB)."""
    small, large = sizes[3], sizes[12]
    size = {p: sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (small, large)}
    delta = {p: _peak_above_baseline(stage, p, tmp_path / p.name) for p in (small, large)}
    slope = (delta[large] - delta[small]) / (size[large] - size[small])
    print(f"\n{stage}: {delta[small] >> 20} / {delta[large] >> 20} MiB above baseline for {size[small] >> 20} / "
          f"{size[large] >> 20} MiB checkpoints: {slope:.2f} bytes per checkpoint byte")  # fmt: skip
    assert slope < bound


def test_a_threshold_set_in_the_environment_is_kept():
    """``MALLOC_MMAP_THRESHOLD_`` is the user's to set; edgepack fixes glibc's threshold only when it is unset."""
    code = "from edgepack.allocator import return_large_frees; print(return_large_frees())"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    kept = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env.pop("MALLOC_MMAP_THRESHOLD_")
    fixed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert (kept.stdout.strip(), fixed.stdout.strip()) == ("False", "True" if sys.platform == "linux" else "False")
