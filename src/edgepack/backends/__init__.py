"""Export targets, one folder each: ``edgepack/backends/<name>/``.

A backend's folder holds everything it needs: ``exporter.py`` (eager model -> files + ``Artifact``), its torch
model wrapper, its parity runner, and in ``__init__.py`` one ``Backend`` descriptor: the facts the rest of
edgepack asks of a target (runtime, platforms, minimum OS and runtime version, packages, memory cost terms, how
the bench labels and threads it). Plan, memory, manifest, bundle, matrix and bench read those facts from here and
keep no per-target tables of their own.

Adding a backend: a folder with a descriptor named ``BACKEND``, and its name in ``BUILTIN`` below. Importing a
backend's package is cheap: heavy libraries are imported inside its exporter and runner only when they run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgepack.backends.artifact import (  # noqa: F401 - the contract every backend shares, re-exported
    ARTIFACT_FILE,
    PREFILL_CHUNK,
    Artifact,
    Exporter,
    ExportRequest,
    find_codes,
    heartbeat,
    integer_settings,
)
from edgepack.errors import ExportError

# The registration line: one name per folder under edgepack/backends/, in the order targets are listed.
BUILTIN = ("executorch", "onnx", "coreml", "mlx", "gguf")
MIB = 1 << 20


@dataclass(frozen=True)
class RuntimeCost:
    """What a runtime costs beyond the model's own tensors (see ``edgepack.memory``)."""

    base_bytes: int  # the runtime's code, allocator arenas and thread pools, independent of the model
    kv_dtype: str | None = None  # a fixed KV-cache dtype, or None for the recipe's dtype
    kv_window_aware: bool = False  # whether its KV cache holds only the window for sliding layers
    kv_grows: bool = False  # the cache grows with the tokens held (past/present), else allocated in full up front


@dataclass(frozen=True)
class ExportCost:
    """Peak RSS of this target's export, and of its parity check, on the exporting host: the libraries the stage
    imports plus a multiple of the checkpoint's bf16 bytes. Fitted to ``edgepack bench-stages`` runs (the README's
    memory table: SmolLM2-135M for the base, a 3.4B Ministral 3 for the multiple); the matrix schedules cells by it.
    """

    base_bytes: int
    per_weight_byte: float
    parity_base_bytes: int
    parity_per_weight_byte: float

    def peak(self, weight_bytes: int, parity: bool) -> int:
        export = self.base_bytes + self.per_weight_byte * weight_bytes
        check = self.parity_base_bytes + self.parity_per_weight_byte * weight_bytes if parity else 0
        return int(max(export, check))


@dataclass(frozen=True)
class Backend:
    name: str  # the target name: --target, the artifact's folder, Artifact.target
    runtime: str  # what runs it on device: the manifest's runtime, bundle --runtime
    device_runtime: str  # the name device profiles list it under (devices/*.yaml `runtimes`)
    platforms: tuple[str, ...]  # the bundle platforms that carry it (ios, android)
    # What a device needs, machine-readable: runtime version (None: any that loads it), minimum OS per platform.
    runtime_version: str | None
    min_os: dict[str, str]
    packages: tuple[str, ...]  # the Python packages whose version changes its output (matrix cache key)
    cost: RuntimeCost
    export_cost: ExportCost
    exporter: str  # "module:Class", imported only when an export runs
    runner: str  # "module:factory" -> Runner, imported only when parity or bench runs
    min_seq_len: int = 2  # the shortest --max-seq-len it can export (checked before any weight is loaded)
    zero_points: bool = True  # its integer weights carry zero points (else: the recipe's symmetric variant)
    float_zero_points: bool = False  # it keeps a linear's zero points as one float per group (memory estimate)
    native_tokenizer: bool = False  # its runtime reads the checkpoint's native tokenizer file (else tokenizer.json)
    preload: tuple[str, ...] = ()  # modules its runtime loads before any artifact (bench's RSS baseline)
    threads_option: bool = False  # its runner takes threads= when opened
    threads_hook: str | None = None  # "module:function(n)" setting a process-wide thread pool, called before loading
    os_names: tuple[str, ...] | None = None  # the device OSes it runs on at all (None: any)
    host_note: str = ""  # said beside bench/parity figures when the host does not run the device runtime
    label_package: str | None = None  # the package bench names as the host runtime (default: ``runtime``)
    label_suffix: str = ""  # e.g. " (XNNPACK)"

    @property
    def requires(self) -> dict:
        return {"runtime": self.runtime, "runtime_version": self.runtime_version, "os": dict(self.min_os)}

    def new_exporter(self, **options) -> Exporter:
        return _load(self.exporter)(**options)

    def open_runner(self, export_root, artifact, **options):
        return _load(self.runner)(export_root, artifact, **options)

    def set_threads(self, threads: int) -> None:
        if self.threads_hook:
            _load(self.threads_hook)(threads)

    def runtime_label(self) -> str:
        """The runtime and its installed version, for bench tables."""
        from importlib.metadata import PackageNotFoundError, version

        package = self.label_package or self.runtime
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = "not installed"
        return f"{package} {installed}{self.label_suffix}"


def _load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


_BACKENDS: dict[str, Backend] = {}


def backends() -> list[Backend]:
    """Every registered backend, in ``BUILTIN`` order."""
    if not _BACKENDS:
        for name in BUILTIN:
            backend = importlib.import_module(f"edgepack.backends.{name}").BACKEND
            if backend.name != name:
                raise RuntimeError(f"edgepack/backends/{name} registers a descriptor named {backend.name!r}")
            _BACKENDS[name] = backend
    return list(_BACKENDS.values())


def target_names() -> list[str]:
    return [b.name for b in backends()]


def get_backend(name: str) -> Backend:
    for backend in backends():
        if backend.name == name:
            return backend
    raise ExportError(f"Unknown export target {name!r}. Supported: {', '.join(target_names())}.")


def get_exporter(name: str, **options) -> Exporter:
    return get_backend(name).new_exporter(**options)


def by_runtime(runtime: str) -> Backend | None:
    return next((b for b in backends() if b.runtime == runtime), None)


def runtime_names() -> list[str]:
    return list(dict.fromkeys(b.runtime for b in backends()))


def platform_targets() -> dict[str, tuple[str, ...]]:
    """Bundle platform -> the targets it carries, from each backend's ``platforms``."""
    out: dict[str, list[str]] = {}
    for b in backends():
        for platform in b.platforms:
            out.setdefault(platform, []).append(b.name)
    return {p: tuple(t) for p, t in sorted(out.items())}
