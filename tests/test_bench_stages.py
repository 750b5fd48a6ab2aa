"""``edgepack bench-stages``: per-stage wall time and peak memory, each stage in its own watched process."""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from edgepack.bench_stages import _tensor_shapes, PRESETS, watch
from edgepack.cli import main


def test_a_stage_past_the_limit_is_killed_and_reported():
    grow = "import time; x = bytearray(400 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)"
    result = watch("grow", [sys.executable, "-c", grow], limit_gb=0.2)
    assert result.status == "killed past 0.2 GB" and result.seconds < 20
    assert result.peak_bytes > 0.2 * (1 << 30)


def test_a_stage_that_fits_reports_its_peak():
    """Its own peak, not this process's: a forked child's ru_maxrss starts at the parent's high-water mark (it
    read past 1 GB for this 100 MB stage once the slow tier had run first and the test process had grown)."""
    fits = "import time; x = bytearray(100 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(0.5)"
    held = bytearray(1 << 30)
    held[::4096] = b"1" * len(held[::4096])  # this process past 1 GB, as after a slow test
    result = watch("fits", [sys.executable, "-c", fits], limit_gb=4)
    del held
    assert result.status == "ok" and 100 << 20 < result.peak_bytes < 1 << 30, result


def test_the_4b_preset_is_ministral3_3b_text_configuration():
    shapes = _tensor_shapes(PRESETS["ministral3-3b"])
    params = sum(__import__("math").prod(s) for s in shapes.values())
    assert 3.40e9 < params < 3.45e9  # the 3.4B text decoder (tied embeddings)
    assert shapes["model.layers.25.mlp.down_proj.weight"] == (3072, 9216)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (1024, 3072)


def test_bench_stages_exports_and_checks_a_model(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["bench-stages", str(tiny_checkpoint("llama")), "--out", str(tmp_path),
                                       "--target", "onnx", "--max-seq-len", "64", "--json", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [s["stage"] for s in report["stages"]] == ["export onnx", "parity onnx"]
    assert all(s["status"].startswith("ok") and s["peak_bytes"] > 0 for s in report["stages"])
    assert report["stages"][0]["artifact_bytes"] > 0 and (tmp_path / "bench-stages.json").is_file()
