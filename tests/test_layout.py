"""The code's shape: one folder per backend with one descriptor the rest of edgepack asks, a library that never
imports its CLI, no import cycles, and one typed reader of export.json. Structure a change could silently undo."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from edgepack.backends import BUILTIN, backends, get_backend, platform_targets, runtime_names, target_names

SRC = Path(__file__).resolve().parents[1] / "src" / "edgepack"
BACKENDS_DIR = SRC / "backends"


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> list[str]:
    """Every edgepack module ``path`` imports, at the top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("edgepack"):
            names += [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("edgepack")]
    return names


def test_every_backend_folder_registers_one_descriptor():
    folders = sorted(p.name for p in BACKENDS_DIR.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(BUILTIN) == sorted(target_names())
    for backend in backends():
        package = f"edgepack.backends.{backend.name}"
        # Its exporter and runner live in its own folder and resolve; the exporter carries the same descriptor.
        assert backend.exporter.startswith(package + ".") and backend.runner.startswith(package + ".")
        exporter = backend.new_exporter()
        assert exporter.backend is backend
        assert callable(exporter.export) and callable(exporter.unhonoured) and callable(exporter.interface)
        assert (BACKENDS_DIR / backend.name / "runner.py").is_file()
        assert backend.runtime in runtime_names()


def test_plan_bundle_matrix_bench_and_manifest_read_the_descriptor(tmp_path):
    from fake_export import make_export

    from edgepack.bench import runtime_label
    from edgepack.devices import load_device
    from edgepack.manifest import build_manifest
    from edgepack.matrix import backend_versions
    from edgepack.plan import _runs_on

    platforms = platform_targets()
    for backend in backends():
        assert all(backend.name in platforms[p] for p in backend.platforms)
        assert set(backend_versions(backend.name)) <= set(backend.packages)
        assert runtime_label(backend.name) == backend.runtime_label()
        profile = "iphone-13" if backend.os_names and "android" not in backend.os_names else "galaxy-s24"
        base = load_device(profile)
        device = base.model_copy(update={"runtimes": [backend.device_runtime],
                                         "os": base.os.model_copy(update={"min_version": "99.0"})})  # fmt: skip
        assert _runs_on(device, backend, {backend.device_runtime: 0})
        too_old = {name: "1.0" for name in backend.min_os}
        if too_old:
            older = device.model_copy(update={"os": device.os.model_copy(update={"min_version": "1.0"})})
            assert not _runs_on(older, backend, {backend.device_runtime: 0})
    manifest = build_manifest(make_export(tmp_path / "export"))
    for artifact in manifest["artifacts"]:
        assert artifact["requires"] == get_backend(artifact["target"]).requires
        assert artifact["runtime"] == get_backend(artifact["target"]).runtime


def test_no_module_outside_the_backends_keeps_a_per_target_table():
    """Per-target facts belong in the descriptor: no dict keyed by a target or runtime name, no comparison with
    one, anywhere but in edgepack/backends/."""
    names = set(target_names()) | set(runtime_names()) | {b.device_runtime for b in backends()}
    found = []
    for module, path in _modules().items():
        # The anchors key their tables by anchor; the "llama.cpp" anchor shares its name with the gguf runtime.
        if module.startswith("edgepack.backends") or module in ("edgepack.anchors", "edgepack.anchor_runners"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            keys = node.keys if isinstance(node, ast.Dict) else []
            compared = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
            for const in [*keys, *compared]:
                if isinstance(const, ast.Constant) and const.value in names:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {const.value!r}")
    assert found == []


def test_the_library_never_imports_the_cli():
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for module, path in _modules().items()
        if not module.startswith("edgepack.cli") and module != "edgepack.__main__"
        for name in _imports(path)
        if name == "edgepack.cli" or name.startswith("edgepack.cli.")
    ]
    assert offenders == []


# Cycles that stay, each for a reason: a registry package imports its plugin modules, which register with it;
# Checkpoint.load_model streams through edgepack.weights, which reads the checkpoint's files.
ALLOWED_CYCLES = [
    {"edgepack.architectures", *(f"edgepack.architectures.{p.stem}" for p in (SRC / "architectures").glob("[!_]*.py"))},
    {"edgepack.checkpoint", "edgepack.weights"},
]


def test_no_import_cycles():
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for name in _imports(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1 and c not in ALLOWED_CYCLES]
    assert cycles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_export_json_has_one_reader():
    """Only edgepack.export_record parses export.json; every other module goes through ExportRecord."""
    readers = []
    for module, path in _modules().items():
        text = path.read_text()
        if module != "edgepack.export_record" and "export.json" in text:
            for line_no, line in enumerate(text.splitlines(), 1):
                if "export.json" in line and ("read_text" in line or "json.load" in line or "open(" in line):
                    readers.append(f"{path.relative_to(SRC)}:{line_no}")
    assert readers == []


def test_an_export_record_with_unknown_or_wrong_keys_is_refused_whole(tmp_path):
    from fake_export import make_export

    from edgepack.errors import ArtifactError
    from edgepack.export_record import ExportRecord

    root = make_export(tmp_path / "export")
    record = ExportRecord.read(root)
    assert record.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and record.recipe_name == "int4-block32"
    assert ExportRecord.read(root.joinpath()).checkpoint == record.checkpoint  # write/read round trip below
    record.write(root)
    assert ExportRecord.read(root) == record
    raw = json.loads((root / "export.json").read_text())
    raw["checkpoint"]["allow_pickle"] = True
    raw["max_seq_len"] = "long"
    raw["extra"] = 1
    (root / "export.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError) as info:
        ExportRecord.read(root)
    message = str(info.value)
    assert "3 problems" in message
    assert "checkpoint.allow_pickle: unknown key" in message and "max_seq_len" in message and "extra" in message
