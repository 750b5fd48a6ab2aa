"""Host benchmarks: each artifact of an export folder in its own runtime on this machine.

Protocol, the same for edgepack's artifacts and for the anchors (``edgepack.anchors``):
1. One fresh process per artifact (``python -m edgepack.bench --one SPEC``): peak RSS is a per-process
   high-water mark, so artifacts measured in one process would inherit each other's peak.
2. In that process: import the runtime, note the RSS (the baseline), open the artifact (timed: load seconds).
3. ``warmup`` untimed runs, then ``repeats`` timed runs. A run resets the KV cache, prefills the prompt
   (``prompt_tokens`` ids of a fixed English text, one chunk), takes the argmax (the first token), then
   decodes ``decode_tokens`` more tokens one at a time, greedy, ignoring end-of-sequence.
4. Figures are medians over the timed runs: TTFT = prefill + first argmax; prefill tok/s = prompt tokens /
   TTFT; decode tok/s = decode tokens / decode seconds; peak RSS = the process's high-water mark (VmHWM).

This module imports only the standard library at the top: the anchors' worker runs it in their own venv.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press. Books became cheaper, literacy spread across "
    "Europe, and scientists could share their results with colleagues in distant cities. "
)


@dataclass
class Measurement:
    """One artifact's figures (medians over the timed runs), or the reason it could not be measured."""

    name: str  # e.g. "edgepack executorch", "optimum-executorch .pte"
    runtime: str  # what ran it: "executorch 1.5.1 (XNNPACK)", "onnxruntime 1.32.0", ...
    path: str
    bytes: int
    note: str = ""  # e.g. "simulated (onnxruntime)" for Core ML off a Mac
    error: str | None = None  # "unavailable: ..." or the failure; no figures then
    load_seconds: float | None = None
    ttft_seconds: float | None = None
    decode_seconds: float | None = None
    prefill_tokens_per_second: float | None = None
    decode_tokens_per_second: float | None = None
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None  # after importing the runtime, before loading the artifact
    estimate_bytes: int | None = None  # edgepack.memory's estimate for this run (edgepack artifacts only)
    greedy: list[int] = field(default_factory=list)  # the first generated ids: a sanity check across runtimes
    runs: list[dict] = field(default_factory=list)  # each timed run's raw seconds

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BenchReport:
    export: str
    model: str
    recipe: str
    protocol: dict  # prompt_tokens, decode_tokens, repeats, warmup, threads
    machine: dict  # platform, cpu count, load average before and after
    results: list[Measurement]

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> BenchReport:
        data = {k: v for k, v in data.items() if k != "schema_version"}
        data["results"] = [Measurement(**r) for r in data["results"]]
        return cls(**data)


@dataclass(frozen=True)
class Protocol:
    prompt_tokens: int = 128
    decode_tokens: int = 64
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None  # None: every core

    def check(self) -> None:
        from edgepack.errors import ConfigError

        problems = [
            f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}"
            for name, low in (("prompt_tokens", 1), ("decode_tokens", 1), ("repeats", 1), ("warmup", 0))
            if getattr(self, name) < low
        ]
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads must be at least 1, got {self.threads}")
        if problems:
            raise ConfigError("bench", problems)


def bench(
    export_dir: str | Path,
    *,
    protocol: Protocol = Protocol(),
    targets: Sequence[str] | None = None,
    anchors: Sequence[Any] = (),
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure every artifact of ``export_dir`` (and each ``edgepack.anchors.Anchor``), one process each."""
    from edgepack.errors import ArtifactError
    from edgepack.parity.harness import discover

    say = progress or (lambda message: None)
    protocol.check()
    root = Path(export_dir)
    from edgepack.export_record import ExportRecord, is_export_folder

    record = ExportRecord.read(root) if is_export_folder(root) else None
    artifacts = [a for a in discover(root) if not targets or a.target in targets]
    if not artifacts:
        raise ArtifactError(f"{root} holds no artifact for target(s) {', '.join(targets or [])}.")
    prompt = prompt_ids(root / "tokenizer", protocol.prompt_tokens)
    estimates = _estimates(root, len(prompt) + protocol.decode_tokens) if record else {}
    load_before = _load_average()
    results = []
    for artifact in artifacts:
        say(f"bench[{artifact.target}]: {artifact.path}")
        spec = {"kind": "artifact", "export_dir": str(root.resolve()), "target": artifact.target}
        name = f"edgepack {artifact.target}"
        result = run_isolated(name, spec, prompt, protocol, artifact_bytes(root, artifact.files))
        result.estimate_bytes = estimates.get(artifact.target)
        results.append(result)
    for anchor in anchors:
        say(f"bench[anchor]: {anchor.name}")
        results.append(anchor.measure(prompt, protocol))
    return BenchReport(
        export=str(root),
        model=record.model_id if record else "",
        recipe=record.recipe_name if record else "",
        protocol=asdict(protocol),
        machine={**_machine(), "load_average_before": load_before, "load_average_after": _load_average()},
        results=results,
    )


def _estimates(root: Path, tokens: int) -> dict[str, int]:
    """edgepack.memory's estimate per target for this run: at the tokens the run holds where the cache grows
    (onnxruntime), at the export's full cache where it is allocated up front (ExecuTorch, Core ML)."""
    from edgepack.backends import get_backend
    from edgepack.memory import artifact_footprints

    return {
        artifact.target: footprint.at(
            tokens if get_backend(artifact.target).cost.kv_grows else artifact.max_seq_len
        ).total
        for artifact, footprint in artifact_footprints(root)
    }


def run_isolated(
    name: str,
    spec: dict,
    prompt: list[int],
    protocol: Protocol,
    size: int,
    *,
    python: str | None = None,
    env: dict | None = None,
    timeout: float = 1800,
) -> Measurement:
    """Run one measurement in a fresh process (``python -m edgepack.bench --one``) and read its JSON back."""
    payload = json.dumps({**spec, "name": name, "prompt": prompt, "protocol": asdict(protocol)})
    cmd = [python or sys.executable, "-m", "edgepack.bench", "--one", payload]
    child_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env, check=False)
    except subprocess.TimeoutExpired:
        return Measurement(name, "", spec.get("path", ""), size, error=f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Measurement(name, "", spec.get("path", ""), size, error=f"worker failed: {tail}")
    result = json.loads(lines[-1])
    if "error" in result:
        return Measurement(name, "", spec.get("path", ""), size, error=result["error"])
    return Measurement(**{**result, "bytes": size})


def measure(runner, prompt: Sequence[int], protocol: Protocol) -> dict:
    """The timing loop over one opened runner (``reset()``, ``forward(tokens) -> logits``); medians."""
    needed = len(prompt) + protocol.decode_tokens
    if needed > runner.max_seq_len:
        from edgepack.errors import ArtifactError

        raise ArtifactError(
            f"{len(prompt)} prompt + {protocol.decode_tokens} decode tokens exceed the artifact's "
            f"{runner.max_seq_len}-position KV cache; lower --prompt-tokens or --decode-tokens."
        )
    for _ in range(protocol.warmup):
        _one_run(runner, prompt, protocol.decode_tokens)
    runs = [_one_run(runner, prompt, protocol.decode_tokens) for _ in range(protocol.repeats)]
    ttft = statistics.median(r["ttft_seconds"] for r in runs)
    decode = statistics.median(r["decode_seconds"] for r in runs)
    return {
        "ttft_seconds": ttft,
        "decode_seconds": decode,
        "prefill_tokens_per_second": len(prompt) / ttft,
        "decode_tokens_per_second": protocol.decode_tokens / decode,
        "greedy": runs[0].pop("greedy"),
        "runs": [{k: v for k, v in r.items() if k != "greedy"} for r in runs],
    }


def _one_run(runner, prompt: Sequence[int], decode_tokens: int) -> dict:
    import numpy as np

    runner.reset()
    start = time.perf_counter()
    token = int(np.argmax(runner.forward(list(prompt))[-1]))
    first = time.perf_counter()
    generated = [token]
    for _ in range(decode_tokens):
        token = int(np.argmax(runner.forward([token])[-1]))
        generated.append(token)
    end = time.perf_counter()
    return {"ttft_seconds": first - start, "decode_seconds": end - first, "greedy": generated[:16]}


def prompt_ids(tokenizer_dir: Path, n: int) -> list[int]:
    """``n`` ids of a fixed English text (repeated as needed); synthetic ids where no tokenizer was exported."""
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        return [(i * 7919) % 200 + 3 for i in range(n)]
    from edgepack.tokenizer import DeviceTokenizer

    ids = DeviceTokenizer(Path(tokenizer_dir)).encode(PROMPT_TEXT)
    return (ids * (n // len(ids) + 1))[:n]


# ---- the worker: runs in a fresh process ----


def worker(spec: dict) -> dict:
    """Open one artifact or anchor as ``spec`` says, measure it, and return the Measurement's fields."""
    protocol = Protocol(**spec["protocol"])
    kind = spec["kind"]
    runtime_key = spec["target"] if kind == "artifact" else spec["anchor_runtime"]
    backend = _backend(runtime_key)
    for module in backend.preload if backend else ():
        if find_spec(module) is not None:  # e.g. llama_cpp: an optional runtime
            __import__(module)
    if backend and protocol.threads:
        backend.set_threads(protocol.threads)
    baseline = own_rss("VmRSS")
    start = time.perf_counter()
    runner, info = _open(spec, protocol)
    load_seconds = time.perf_counter() - start
    figures = measure(runner, spec["prompt"], protocol)
    return {
        "name": spec["name"],
        **info,
        "load_seconds": load_seconds,
        **figures,
        **_memory(runner, baseline),
    }


def _memory(runner, baseline: int) -> dict:
    """Peak and baseline RSS of the process that ran the model: this one, or the runner's own child (llama.cpp
    runs in one: ``edgepack.backends.gguf.runner.LlamaCppProcess``)."""
    if hasattr(runner, "process_rss"):
        baseline, peak = runner.process_rss()
        return {"peak_rss_bytes": peak, "baseline_rss_bytes": baseline}
    return {"peak_rss_bytes": own_rss("VmHWM"), "baseline_rss_bytes": baseline}


def _open(spec: dict, protocol: Protocol):
    """(runner, {"runtime", "path", "note"}) for an export folder's artifact or an anchor."""
    if spec["kind"] == "anchor":
        from edgepack.anchor_runners import open_anchor

        runner, info = open_anchor(spec, protocol.threads)
        return runner, {"runtime": runtime_label(spec["anchor_runtime"]), **info}
    from edgepack.backends import Artifact, get_backend

    root = Path(spec["export_dir"])
    artifact = Artifact.read(root / spec["target"])
    backend = get_backend(artifact.target)
    options = {"threads": protocol.threads} if backend.threads_option and protocol.threads else {}
    runner = backend.open_runner(root, artifact, **options)
    note = backend.host_note if backend.host_note and sys.platform != "darwin" else ""
    note = getattr(runner, "host_note", None) or note
    return runner, {"runtime": runtime_label(artifact.target), "path": artifact.path, "note": note}


def runtime_label(target: str) -> str:
    """The runtime and version that ran ``target`` (a backend's, or an anchor's: the backend it runs like)."""
    return _backend(target).runtime_label()


def _backend(target: str):
    from edgepack.backends import target_names, get_backend

    return get_backend(target) if target in target_names() else None


def own_rss(field_name: str) -> int:
    """VmRSS / VmHWM in bytes from /proc (Linux); ru_maxrss elsewhere (bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


NOT_MODEL = (".json", ".jinja", ".txt", ".md", ".model")  # config and tokenizer files beside a model


def model_bytes(path: Path | None) -> int:
    """A model file's size, or a folder's model files (its config and tokenizer files are not counted)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.endswith(NOT_MODEL))


def artifact_bytes(root: Path, files: Sequence[str]) -> int:
    """An artifact's model files (weights and graph), as listed in its artifact.json."""
    return sum(model_bytes(root / name) for name in files if not name.endswith(NOT_MODEL))


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---- reading the figures ----


def format_table(report: BenchReport) -> str:
    """A plain-text table, one row per artifact or anchor."""
    p = report.protocol
    head = (
        f"{report.model} {report.recipe}: prompt {p['prompt_tokens']} tokens, decode {p['decode_tokens']}, "
        f"median of {p['repeats']} (warm-up {p['warmup']}), threads {p['threads'] or report.machine['cpus']}"
    )
    cols = ("artifact", "runtime", "MB", "TTFT ms", "prefill tok/s", "decode tok/s", "peak RSS MiB", "load s",
            "estimate MiB", "est/(peak-base)")
    rows = [cols] + [_row(m) for m in report.results]
    widths = [max(len(r[i]) for r in rows if len(r) == len(cols)) for i in range(len(cols))]
    lines = [head, ""]
    for row in rows:
        if len(row) == 2:  # an error row: name, then the reason across the figure columns
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    notes = [f"{m.name}: {m.note}" for m in report.results if m.note]
    load = report.machine.get("load_average_before"), report.machine.get("load_average_after")
    machine = f"machine: {report.machine['processor']}, {report.machine['cpus']} cpus; "
    machine += f"load average (1/5/15 min) before {load[0]}, after {load[1]}"
    lines += ["", *notes, machine]
    return "\n".join(lines)


def _row(m: Measurement) -> tuple[str, ...]:
    if not m.ok:
        return (m.name, m.error or "")
    return (
        m.name,
        m.runtime + (" *" if m.note else ""),
        f"{m.bytes / 1e6:.1f}",
        f"{m.ttft_seconds * 1e3:.1f}",
        f"{m.prefill_tokens_per_second:.1f}",
        f"{m.decode_tokens_per_second:.1f}",
        f"{m.peak_rss_bytes / 2**20:.0f}",
        f"{m.load_seconds:.2f}",
        f"{m.estimate_bytes / 2**20:.0f}" if m.estimate_bytes else "",
        _ratio(m),
    )


def _ratio(m: Measurement) -> str:
    """The memory estimate over the RSS the artifact added to the process (peak less the runtime's baseline)."""
    if not m.estimate_bytes or not m.peak_rss_bytes or m.baseline_rss_bytes is None:
        return ""
    return f"{m.estimate_bytes / (m.peak_rss_bytes - m.baseline_rss_bytes):.2f}"


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--one":
        print("usage: python -m edgepack.bench --one SPEC_JSON (one measurement; use `edgepack bench`)", file=sys.stderr)
        return 2
    try:
        result = worker(json.loads(argv[1]))
    except Exception as exc:  # noqa: BLE001 - reported in the table row, the other artifacts still run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
