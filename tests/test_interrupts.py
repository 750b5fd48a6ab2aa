"""Interrupted exports and reproducible ones (slow tier: real exports of a tiny model, every target, with parity).

A reference export runs to the end; then the same export is killed with SIGKILL (no handler runs) at ten points
spread over its progress lines, from loading to packaging; each time nothing may sit at the output path. A final
rerun must complete, remove the temporary folders the killed runs left and say so, pass ``verify``, and hold the
same artifact bytes as the reference (two processes, different hash seeds: nothing random in any artifact).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KILL_POINTS = 10
# What a run writes beside its artifacts that is a record of that run, not part of what ships.
RUN_RECORDS = {"artifact.json"}


def _export(model: Path, out: Path, *, kill_at_line: int | None = None, seed: str = "0") -> tuple[int, list[str]]:
    """Run the export; with ``kill_at_line``, SIGKILL its process group when that progress line appears."""
    cmd = [sys.executable, "-m", "edgepack", "export", str(model), "--recipe", "int4-block32-rtn", "--out", str(out)]
    env = {**os.environ, "PYTHONHASHSEED": seed, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    lines = []
    for line in proc.stderr:
        if _is_progress(line):
            lines.append(line.strip())
            if kill_at_line is not None and len(lines) == kill_at_line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    proc.stderr.close()
    return proc.returncode, lines


def _is_progress(line: str) -> bool:
    head = line.strip().split(" ", 1)[0]
    return head.endswith("s") and head[:-1].replace(".", "", 1).isdigit()


def _artifact_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for target in ("onnx", "coreml", "executorch")
        for p in sorted((root / target).rglob("*"))
        if p.is_file() and p.name not in RUN_RECORDS
    }


def test_sigkill_anywhere_leaves_nothing_half_written_and_a_rerun_is_complete_and_identical(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llama")
    reference = tmp_path / "reference"
    code, lines = _export(model, reference, seed="1")
    assert code == 0 and len(lines) >= KILL_POINTS, lines

    out = tmp_path / "out"
    points = sorted({round(1 + i * (len(lines) - 2) / (KILL_POINTS - 1)) for i in range(KILL_POINTS)})
    assert len(points) == KILL_POINTS
    killed_at = []
    for point in points:
        code, seen = _export(model, out, kill_at_line=point, seed=str(point))
        assert code == -signal.SIGKILL, (point, seen)
        killed_at.append(seen[-1])
        assert not out.exists(), f"killed at {seen[-1]!r}: {out} exists, half-written"
    print("\nkilled at:\n  " + "\n  ".join(killed_at))

    stale = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    code, lines = _export(model, out, seed="2")
    assert code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "stale temporary folders removed"
    if stale:
        assert any(f"removed {len(stale)} temporary folder(s) left by killed runs beside out" in line for line in lines)
    verify = subprocess.run([sys.executable, "-m", "edgepack", "verify", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    got, want = _artifact_files(out), _artifact_files(reference)
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"not byte-identical across two runs: {differ}"
