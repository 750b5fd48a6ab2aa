"""edgepack report: report.md and report.html (plots embedded) from parity.json, the plan and bench.json."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from tiny_export import tiny_onnx_export

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def benched_export(tiny_checkpoint, tmp_path_factory):
    from edgepack.bench import Protocol, bench

    out = tiny_onnx_export(tmp_path_factory, tiny_checkpoint("llama"))
    result = bench(out, protocol=Protocol(prompt_tokens=8, decode_tokens=4, repeats=1, warmup=0, threads=1))
    (out / "bench.json").write_text(json.dumps(result.to_json()))
    return out


def test_report_files_tables_and_embedded_plots(benched_export):
    result = CliRunner().invoke(main, ["report", str(benched_export)])
    assert result.exit_code == 0, result.output
    md = (benched_export / "report.md").read_text()
    page = (benched_export / "report.html").read_text()
    parity = json.loads((benched_export / "parity.json").read_text())["artifacts"][0]
    speed = json.loads((benched_export / "bench.json").read_text())["results"][0]

    for heading in ("Artifacts", "Parity against the fp32 reference", "Memory fit per device", "Speed and memory"):
        assert f"## {heading}" in md and heading in page
    # the parity row carries parity.json's numbers, each beside its threshold, and the error split
    assert f"| {parity['metrics']['cosine']:.4g} ({parity['thresholds']['min_cosine']:g}) |" in md
    assert "quantization KL | conversion KL |" in md
    assert f"| {speed['decode_tokens_per_second']:.1f} |" in md  # the speed row carries bench.json's
    assert "| iphone-13 |" in md  # one memory-fit row per shipped device profile

    embedded = [base64.b64decode(s) for s in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]
    files = [benched_export / f"report-{n}.png" for n in ("size-parity", "kl-split", "decode-speed")]
    assert sorted(embedded) == sorted(f.read_bytes() for f in files)
    assert all(png.startswith(PNG) and len(png) > 5000 for png in embedded)
    assert all(f"]({f.name})" in md for f in files)


def test_an_export_without_a_bench_still_gets_both_parity_plots(tiny_checkpoint, tmp_path_factory, tmp_path):
    """The size/KL plot with the gate drawn and the quantization/conversion split; cues beyond colour."""
    out = shutil.copytree(tiny_onnx_export(tmp_path_factory, tiny_checkpoint("llama")), tmp_path / "export")
    (out / "bench.json").unlink(missing_ok=True)
    from edgepack.report import build_report

    report = build_report(out)
    assert sorted(report.plots) == ["report-kl-split.png", "report-size-parity.png"]
    assert all(png.startswith(PNG) for png in report.plots.values())


def test_matrix_output_reports_every_cell(benched_export, tmp_path):
    """Cells where edgepack matrix writes them (cells/<model>/<recipe>/<target>), named by their cell id."""
    cells = ("tiny/fp32/onnx", "tiny/int8-weight/onnx")
    for cell in cells:
        shutil.copytree(benched_export, tmp_path / "cells" / cell)
    from edgepack.report import build_report

    report = build_report(tmp_path)
    artifacts = next(t for t in report.tables if t.title == "Artifacts")
    assert [row[0] for row in artifacts.rows] == [f"{c}/onnx" for c in cells]
    fit = next(t for t in report.tables if t.title == "Memory fit per device")
    assert fit.header == ["device", *cells]


def test_report_on_a_folder_that_is_neither(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "neither an export folder" in result.output and "no export.json under cells/" in result.output
