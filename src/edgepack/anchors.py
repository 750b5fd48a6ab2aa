"""The anchors: what other tools build for the same model, measured with edgepack's bench protocol.

- ``optimum-executorch``: the .pte that ``optimum-cli export executorch`` builds (XNNPACK; 8da4w, group 32;
  int8 embeddings; its custom SDPA and KV-cache ops), run in ExecuTorch's Python runtime.
- ``onnxruntime-genai``: the ONNX folder its model builder writes (``-p int4 -e cpu``, block 32), run in
  onnxruntime.
- ``llama.cpp``: the original GGUF through llama-cpp-python.

They live in a separate, throwaway venv (``ensure_env``), never in edgepack's: optimum-executorch 1.1.0 pins
transformers 5.0.0rc1 and optimum 2.0, which cannot sit beside edgepack's transformers. Its runtimes are pinned
to edgepack's (executorch 1.5.1, onnxruntime 1.32.0), so the runtime is the same and only the artifact differs.
Each anchor is built once and reused; one that cannot be installed or built is reported as
"unavailable: <reason>" and the bench goes on.

This module imports only the standard library at the top: the worker imports it inside the anchors' venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# torch is pinned on every pip command line: pip then takes the CPU wheel on this machine; any other version
# pulls several GB of CUDA wheels. optimum-executorch 1.1.0 (the newest) requires executorch>=1.0 and no torch.
TORCH = "torch==2.13.0"
# anchor -> what it needs, installed one anchor at a time so that one failure leaves the others measurable.
REQUIREMENTS = {
    "optimum-executorch": ["executorch==1.5.1", "torchao==0.18.0", "optimum-executorch==1.1.0"],
    "onnxruntime-genai": ["onnxruntime==1.32.0", "onnxruntime-genai==0.18.0", "onnx", "onnx-ir", "transformers"],
    "llama.cpp": ["llama-cpp-python==0.3.36"],  # edgepack.backends.gguf.LLAMA_CPP: built from source (~8 min on 2 cores)
}
# onnxruntime-genai 0.18's builder imports models newer than the transformers optimum-executorch pins
# (5.0.0rc1): the builder alone sees a newer transformers, from a folder put first on its PYTHONPATH.
GENAI_OVERLAY = ("genai-overlay", "transformers==5.23.0")
ANCHORS = tuple(REQUIREMENTS)
MARKER = ".edgepack-anchors.json"  # in the venv: the requirements installed, and each anchor's failure


@dataclass
class Anchor:
    name: str  # one of ANCHORS
    path: Path | None  # the built artifact (.pte, ONNX folder, .gguf)
    python: str | None  # the anchors' venv interpreter
    max_seq_len: int
    unavailable: str | None = None

    def measure(self, prompt: list[int], protocol):
        """The bench protocol in a fresh process of the anchors' venv (``edgepack.bench.run_isolated``)."""
        from edgepack.bench import Measurement, model_bytes, run_isolated

        if self.unavailable:
            return Measurement(self.name, "", str(self.path or ""), 0, error=f"unavailable: {self.unavailable}")
        spec = {"kind": "anchor", "anchor": self.name, "anchor_runtime": RUNTIME[self.name],
                "path": str(self.path), "max_seq_len": self.max_seq_len}  # fmt: skip
        src = str(Path(__file__).resolve().parents[1])  # edgepack's source, importable without installing it
        return run_isolated(self.name, spec, prompt, protocol, model_bytes(self.path), python=self.python,
                            env={"PYTHONPATH": src})  # fmt: skip


RUNTIME = {"optimum-executorch": "executorch", "onnxruntime-genai": "onnx", "llama.cpp": "gguf"}  # anchor -> target


def prepare_anchors(
    export_dir: Path,
    *,
    env_dir: Path,
    work_dir: Path,
    gguf: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Anchor]:
    """Install the anchors' venv if needed, build each anchor for the export's model once; never raises."""
    from edgepack.export_record import ExportRecord

    record = ExportRecord.read(export_dir)
    model_dir = Path(record.checkpoint.source or "")
    max_seq_len = int(record.max_seq_len or 0)
    python, failed = ensure_env(Path(env_dir), progress)
    gguf = gguf or _known_gguf(record)
    builders = {
        "optimum-executorch": lambda: build_optimum_executorch(python, model_dir, work_dir, max_seq_len, progress),
        "onnxruntime-genai": lambda: build_genai(python, model_dir, work_dir, progress),
        "llama.cpp": lambda: _check_gguf(python, gguf),
    }
    anchors = []
    for name, build in builders.items():
        if name in failed:
            anchors.append(Anchor(name, None, python, max_seq_len, failed[name]))
            continue
        try:
            anchors.append(Anchor(name, build(), python, max_seq_len))
        except RuntimeError as exc:
            anchors.append(Anchor(name, None, python, max_seq_len, str(exc)))
    return anchors


def ensure_env(env_dir: Path, progress: Callable[[str], None] = lambda message: None,
               names: tuple[str, ...] = ANCHORS) -> tuple[str, dict[str, str]]:  # fmt: skip
    """The anchors' venv interpreter and {anchor: why it could not be installed}; installs each of ``names``
    once per pin set (``edgepack quality`` needs only the onnxruntime-genai builder)."""
    python = env_dir / "bin" / "python"
    marker = env_dir / MARKER
    state = json.loads(marker.read_text()) if marker.is_file() else {}
    if state.get("requirements") != REQUIREMENTS or tuple(state.get("overlay", ())) != GENAI_OVERLAY:
        state = {"requirements": REQUIREMENTS, "overlay": GENAI_OVERLAY, "failed": {}, "attempted": []}
    state.setdefault("attempted", list(ANCHORS) if marker.is_file() else [])  # markers before "attempted"
    missing = [n for n in names if n not in state["attempted"]]
    if not missing:
        return str(python), {k: v for k, v in state["failed"].items() if k in names}
    if not python.is_file():
        progress(f"anchors: creating the venv {env_dir}")
        try:
            _run([sys.executable, "-m", "venv", str(env_dir)], "create the anchors' venv")
        except RuntimeError as exc:
            return str(python), {name: str(exc) for name in names}
    from edgepack.backends.gguf import LLAMA_CPP_CMAKE_ARGS  # the same build as edgepack's own llama.cpp runs

    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", LLAMA_CPP_CMAKE_ARGS)}
    for name in missing:
        packages = REQUIREMENTS[name]
        progress(f"anchors: installing {', '.join(packages)} into {env_dir}")
        try:
            _run([str(python), "-m", "pip", "install", "-q", TORCH, *packages], f"install {name}", env=env)
            if name == "onnxruntime-genai":
                overlay = ["--target", str(env_dir / GENAI_OVERLAY[0]), GENAI_OVERLAY[1]]  # with its deps, no torch
                _run([str(python), "-m", "pip", "install", "-q", *overlay], "install the builder's transformers")
        except RuntimeError as exc:
            state["failed"][name] = str(exc)
        state["attempted"].append(name)
    marker.write_text(json.dumps(state, indent=2) + "\n")
    return str(python), {k: v for k, v in state["failed"].items() if k in names}


def build_optimum_executorch(python: str, model_dir: Path, work_dir: Path, max_seq_len: int, progress) -> Path:
    out = Path(work_dir) / "optimum-executorch"
    pte = out / "model.pte"
    if pte.is_file():
        return pte
    progress("anchors: optimum-cli export executorch (8da4w, group 32, int8 embeddings)")
    cli = str(Path(python).parent / "optimum-cli")
    cmd = [cli, "export", "executorch", "--model", str(model_dir), "--task", "text-generation",
           "--recipe", "xnnpack", "--use_custom_sdpa", "--use_custom_kv_cache", "--qlinear", "8da4w",
           "--qlinear_group_size", "32", "--qembedding", "8w", "--max_seq_len", str(max_seq_len),
           "--output_dir", str(out)]  # fmt: skip
    _run(cmd, "build the optimum-executorch .pte", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if not pte.is_file():
        raise RuntimeError(f"optimum-cli wrote no model.pte in {out}")
    return pte


def build_genai(python: str, model_dir: Path, work_dir: Path, progress) -> Path:
    out = Path(work_dir) / "onnxruntime-genai"
    if (out / "genai_config.json").is_file():
        return out
    progress("anchors: onnxruntime_genai.models.builder -p int4 -e cpu")
    cmd = [python, "-m", "onnxruntime_genai.models.builder", "-m", str(model_dir), "-o", str(out),
           "-p", "int4", "-e", "cpu", "-c", str(Path(work_dir) / ".genai-cache"),
           "--extra_options", "int4_block_size=32"]  # fmt: skip
    overlay = str(Path(python).parents[1] / GENAI_OVERLAY[0])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": overlay}
    _run(cmd, "build the onnxruntime-genai ONNX folder", env=env)
    return out


def _check_gguf(python: str, gguf: Path | None) -> Path:
    if gguf is None or not Path(gguf).is_file():
        raise RuntimeError("no GGUF of this model is known; pass --gguf FILE")
    probe = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"llama-cpp-python is not installed in the anchors' venv ({_last_line(probe.stderr)})")
    return Path(gguf)


def _known_gguf(record) -> Path | None:
    from edgepack.demo import SMOLLM2_ID, smollm2_gguf

    return smollm2_gguf() if record.model_id == SMOLLM2_ID else None


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:  # e.g. the venv's interpreter is missing
        raise RuntimeError(f"could not {what}: {exc}") from None
    if done.returncode != 0:
        raise RuntimeError(f"could not {what}: {_last_line(done.stderr or done.stdout)}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
