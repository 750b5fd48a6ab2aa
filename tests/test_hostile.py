"""Hostile and careless input, command by command, as data: every case exits with its code (2: the user must change
something; 1: a bundle or parity that must not ship), prints one line that names the problem and the fix, never a
traceback, leaves nothing at the output path (nor a temporary sibling) and changes nothing outside it.

Each case builds its inputs under ``tmp/in`` (a copy of a tiny checkpoint, a fabricated export folder, a bundle
of it) and returns the command line; the runner snapshots ``tmp/in`` before and compares after. Real exports are
not needed for any of these: the errors are caught before a model is loaded or a backend runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.manifest import write_manifest
from fake_export import make_export


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, Inputs], list[str]]  # (tmp/in, inputs) -> argv
    says: str  # a fragment of the one line
    code: int = 2


class Inputs:
    """Fresh copies of the shared inputs, made on demand under ``tmp/in``."""

    def __init__(self, root: Path, tiny: Path, export: Path):
        self.root, self._tiny, self._export = root, tiny, export

    def model(self) -> Path:
        return shutil.copytree(self._tiny, self.root / "model", dirs_exist_ok=True)

    def export(self) -> Path:
        return shutil.copytree(self._export, self.root / "export", dirs_exist_ok=True)

    def bundle(self) -> Path:
        from edgepack.bundle import write_bundle

        out = self.root / "bundle"
        if not out.exists():
            write_bundle(self._export, out)
        return out

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path


OUT = "OUT"  # stands for the case's output path in an argv


def _json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _config(key: str, value) -> Callable[[Path, Inputs], Path]:
    def damage(_, inputs: Inputs) -> Path:
        model = inputs.model()
        _json(model / "config.json", lambda c: c.__setitem__(key, value))
        return model

    return damage


def _header(edit: Callable[[dict], object] | None = None, *, replace=None) -> Callable[[Path, Inputs], Path]:
    """A copy of the tiny model whose safetensors header is edited in place, or replaced (same data bytes)."""

    def damage(_, inputs: Inputs) -> Path:
        model = inputs.model()
        raw = (model / "model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        if edit:
            edit(header)
        header = header if replace is None else replace
        text = json.dumps(header).encode()
        (model / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
        return model

    return damage


def _first_tensor(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


def _index(names: list[str]) -> Callable[[Path, Inputs], Path]:
    def damage(_, inputs: Inputs) -> Path:
        model = inputs.model()
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {f"t{i}": n for i, n in enumerate(names)}}))
        return model

    return damage


def _manifest(edit: Callable[[dict], object]) -> Callable[[Path, Inputs], Path]:
    def damage(_, inputs: Inputs) -> Path:
        export = inputs.export()
        _json(export / "manifest.json", edit)
        return export

    return damage


def _on(command: str, damage, *extra: str) -> Callable[[Path, Inputs], list[str]]:
    """``edgepack COMMAND <what damage built> [extra]``; ``export`` writes to OUT."""

    def build(root: Path, inputs: Inputs) -> list[str]:
        target = damage(root, inputs)
        argv = [command, str(target), *extra]
        return argv + (["--out", OUT, "--quiet"] if command == "export" else [])

    return build


def _model(_, inputs: Inputs) -> Path:
    return inputs.model()


def _export(_, inputs: Inputs) -> Path:
    return inputs.export()


def _route(state, request=None) -> Callable[[Path, Inputs], list[str]]:
    def build(root: Path, inputs: Inputs) -> list[str]:
        export = inputs.export()
        s = inputs.file("state.json", state if isinstance(state, str) else json.dumps(state))
        r = inputs.file("request.json", json.dumps(request or {"messages": [{"role": "user", "content": "hi"}]}))
        return ["route", "--manifest", str(export), "--device-state", str(s), "--request", str(r), "--dry-run"]

    return build


def _zip(members: dict[str, bytes], *, link: str | None = None) -> Callable[[Path, Inputs], list[str]]:
    def build(root: Path, inputs: Inputs) -> list[str]:
        path = root / "b.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            if link:
                info = zipfile.ZipInfo(link)
                info.external_attr = 0o120777 << 16
                zf.writestr(info, "/etc/hostname")
        return ["verify", str(path)]

    return build


def _bomb(root: Path, inputs: Inputs) -> list[str]:
    path = root / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("manifest.json", b"{}")
        with zf.open("zeros.bin", "w", force_zip64=True) as member:
            block = bytes(1 << 24)
            for _ in range(64):  # 1 GiB of zeros, ~1 MB compressed
                member.write(block)
    return ["verify", str(path)]


def _bad_crc(root: Path, inputs: Inputs) -> list[str]:
    """A readable archive whose one member's bytes were changed after it was written (stored, so in place)."""
    path = root / "crc.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", b"{}")
        zf.writestr("data.bin", b"A" * 5000)
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"A" * 100) + 10] = ord("B")
    path.write_bytes(bytes(raw))
    return ["verify", str(path)]


def _disk_full(root: Path, inputs: Inputs) -> list[str]:
    return ["bundle", str(inputs.export()), "--out", OUT, "--platform", "ios"]


def _shipped_device() -> str:
    from edgepack.paths import shipped_dir

    return (shipped_dir("devices") / "galaxy-s24.yaml").read_text()


def _read_only_parent(command: str) -> Callable[[Path, Inputs], list[str]]:
    def build(root: Path, inputs: Inputs) -> list[str]:
        src = inputs.model() if command == "export" else inputs.export()
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        tail = ["--quiet"] if command == "export" else []
        return [command, str(src), "--out", str(locked / "out"), *tail]

    return build


def _gguf(data: bytes) -> Callable[[Path, Inputs], list[str]]:
    def build(root: Path, inputs: Inputs) -> list[str]:
        return ["inspect", str(inputs.file("model.gguf", data))]

    return build


def _truncated_gguf(root: Path, inputs: Inputs) -> list[str]:
    # a real header (magic, version 3, 2 tensors, 1 metadata key) cut off inside the metadata
    data = b"GGUF" + struct.pack("<IQQ", 3, 2, 1) + struct.pack("<Q", 30) + b"general.arch"
    return ["inspect", str(inputs.file("model.gguf", data))]


def _parity_tampered_pickle(root: Path, inputs: Inputs) -> list[str]:
    import torch
    from safetensors.torch import load_file

    model = inputs.model()
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    export = inputs.export()
    # Point the record at a pickled checkpoint: pickles still need the caller's --allow-pickle. (A record that
    # also says allow_pickle is refused whole: the key is not part of an export record.)
    _json(export / "export.json", lambda r: r["checkpoint"].update(path=str(model)))
    return ["parity", str(export)]


def _in_export(root: Path, inputs: Inputs) -> list[str]:
    export = inputs.export()
    return ["bundle", str(export), "--out", str(export / "bundles")]


def _escape_manifest(kind: str):
    def edit(m: dict) -> None:
        if kind == "tokenizer":
            m["tokenizer"]["files"][0]["path"] = "../../../../etc/hostname"
        elif kind == "artifact":
            m["artifacts"][0]["files"][0]["path"] = "/etc/hostname"
        else:
            m["artifacts"][0]["path"] = "onnx/../../secret"

    return edit


def _validate(name: str, content: str, *extra: str) -> Callable[[Path, Inputs], list[str]]:
    def build(root: Path, inputs: Inputs) -> list[str]:
        return ["validate", str(inputs.file(name, content)), *extra]

    return build


def _matrix(content: str, *extra: str) -> Callable[[Path, Inputs], list[str]]:
    def build(root: Path, inputs: Inputs) -> list[str]:
        return ["matrix", str(inputs.file("matrix.yaml", content)), *extra]

    return build


def _plain(*argv: str) -> Callable[[Path, Inputs], list[str]]:
    return lambda root, inputs: list(argv)


def _with_model(command: str, *extra: str) -> Callable[[Path, Inputs], list[str]]:
    return _on(command, _model, *extra)


def _with_export(command: str, *extra: str) -> Callable[[Path, Inputs], list[str]]:
    return _on(command, _export, *extra)


def _tokenizer_json(text: str):
    def damage(_, inputs: Inputs) -> Path:
        model = inputs.model()
        (model / "tokenizer.json").write_text(text)
        return model

    return damage


def _no_tokenizer(_, inputs: Inputs) -> Path:
    model = inputs.model()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    return model


def _export_tokenizer(text: str):
    def damage(_, inputs: Inputs) -> Path:
        export = inputs.export()
        (export / "tokenizer" / "tokenizer.json").write_text(text)
        return export

    return damage


CASES: dict[str, Case] = {
    # --- loading a checkpoint: inspect, export, plan -----------------------------------------------------------
    "inspect: no such folder": Case(_plain("inspect", "./no/such/model"), "is neither a local folder"),
    "inspect: empty folder": Case(lambda r, i: ["inspect", str(i.file("empty/.keep", "").parent)], "has no config.json"),
    "inspect: config.json not JSON": Case(_on("inspect", lambda r, i: (i.model() / "config.json").write_text("{") and r / "model"), "config.json"),
    "inspect: config.json a list": Case(_on("inspect", lambda r, i: (i.model() / "config.json").write_text("[]") and r / "model"), "config.json"),
    "inspect: truncated safetensors": Case(_on("inspect", lambda r, i: (i.model() / "model.safetensors").write_bytes(b"\x10\x00") and r / "model"), "corrupt or truncated"),
    "inspect: header without data_offsets": Case(_on("inspect", _header(lambda h: _first_tensor(h).pop("data_offsets"))), "lacks dtype, shape or data_offsets"),
    "inspect: header not an object": Case(_on("inspect", _header(replace=[1, 2])), "not a JSON object"),
    "inspect: header shape disagrees with its bytes": Case(_on("inspect", _header(lambda h: _first_tensor(h).__setitem__("shape", [3]))), "needs 12 bytes"),
    "inspect: header offsets reversed": Case(_on("inspect", _header(lambda h: _first_tensor(h)["data_offsets"].reverse())), "bad shape or data_offsets"),
    "inspect: index names a shard outside the folder": Case(_on("inspect", _index(["../../../../etc/hostname"])), "names shards outside its folder"),
    "inspect: index names an absolute shard": Case(_on("inspect", _index(["/etc/passwd.safetensors"])), "names shards outside its folder"),
    "inspect: index names a missing shard": Case(_on("inspect", _index(["model-00002-of-00002.safetensors"])), "missing shards listed in its index"),
    "inspect: index not JSON": Case(_on("inspect", lambda r, i: (i.model() / "model.safetensors.index.json").write_text("{") and r / "model"), "not a valid safetensors index"),
    "inspect: max_position_embeddings a string": Case(_on("inspect", _config("max_position_embeddings", "4k")), "max_position_embeddings"),
    "inspect: max_position_embeddings zero": Case(_on("inspect", _config("max_position_embeddings", 0)), "max_position_embeddings"),
    "inspect: corrupt tokenizer.json": Case(_on("inspect", _tokenizer_json('{"model": ')), "tokenizer.json"),
    "inspect: missing tokenizer files": Case(_on("inspect", _no_tokenizer), "no tokenizer"),
    "inspect: garbage .gguf": Case(_gguf(b"not a gguf file at all"), "GGUF"),
    "inspect: truncated .gguf": Case(_truncated_gguf, "GGUF"),
    "inspect: a file, not a folder": Case(lambda r, i: ["inspect", str(i.file("weights.bin", b"\0" * 8))], "is a file, not a model folder"),
    "export: header without data_offsets": Case(_on("export", _header(lambda h: _first_tensor(h).pop("data_offsets"))), "lacks dtype, shape or data_offsets"),
    "export: max_position_embeddings zero": Case(_on("export", _config("max_position_embeddings", 0)), "max_position_embeddings"),
    "export: corrupt tokenizer.json": Case(_on("export", _tokenizer_json("not json")), "tokenizer.json"),
    "plan: header without data_offsets": Case(_on("plan", _header(lambda h: _first_tensor(h).pop("data_offsets"))), "lacks dtype, shape or data_offsets"),
    "plan: header not an object": Case(_on("plan", _header(replace="x")), "not a JSON object"),
    "plan: unknown device": Case(_with_model("plan", "--devices", "nokia-3310"), "nokia-3310"),
    "plan: unknown target": Case(_with_model("plan", "--targets", "tflite"), "tflite"),
    # --- export's arguments ----------------------------------------------------------------------------------
    "export: unknown recipe": Case(_with_model("export", "--recipe", "int2-dreams"), "unknown recipe"),
    "export: unknown target": Case(_with_model("export", "--target", "tflite"), "Unknown target 'tflite'"),
    "export: empty target list": Case(_with_model("export", "--target", ","), "--target"),
    "export: blank target in the list": Case(_with_model("export", "--target", "onnx,,coreml"), "--target"),
    "export: top-1 threshold above 1": Case(_with_model("export", "--min-top1", "7"), "--min-top1"),
    "export: negative KL threshold": Case(_with_model("export", "--max-kl", "-1"), "--max-kl"),
    "export: cosine threshold above 1": Case(_with_model("export", "--min-cosine", "1.5"), "--min-cosine"),
    "export: max-seq-len zero": Case(_with_model("export", "--max-seq-len", "0"), "--max-seq-len"),
    "export: max-seq-len beyond context": Case(_with_model("export", "--max-seq-len", "100000"), "exceeds the model's context length"),
    "export: missing calibration file": Case(_with_model("export", "--calibration", "./nope.jsonl"), "nope.jsonl"),
    "export: malformed calibration jsonl": Case(lambda r, i: _with_model("export", "--calibration", str(i.file("cal.jsonl", "{not json\n")))(r, i), "cal.jsonl"),
    "export: malformed prompts file": Case(lambda r, i: _with_model("export", "--prompts", str(i.file("p.yaml", "- [unclosed\n")))(r, i), "p.yaml"),
    "export: read-only parent of --out": Case(_read_only_parent("export"), "cannot write"),
    "export: --out is a file": Case(lambda r, i: ["export", str(i.model()), "--out", str(i.file("taken.txt", "keep")), "--quiet"], "is a file"),
    # --- parity ------------------------------------------------------------------------------------------------
    "parity: no export.json": Case(lambda r, i: ["parity", str(i.file("nothing/x.txt", "x").parent)], "export"),
    "parity: export.json not JSON": Case(_on("parity", lambda r, i: (i.export() / "export.json").write_text("{") and r / "export"), "export.json"),
    "parity: unknown target before a broken tokenizer": Case(_on("parity", _export_tokenizer("{"), "--target", "tflite"), "tflite"),
    "parity: empty target list": Case(_with_export("parity", "--target", ","), "--target"),
    "parity: top-1 threshold above 1": Case(_with_export("parity", "--min-top1", "7"), "--min-top1"),
    "parity: decode steps zero": Case(_with_export("parity", "--decode-steps", "0"), "--decode-steps"),
    "parity: a tampered export.json asks for pickles": Case(_parity_tampered_pickle, "--allow-pickle"),
    # --- validate, recipes, devices, schema --------------------------------------------------------------------
    "validate: a file of no known kind": Case(_validate("notes.yaml", "title: shopping\nitems: [milk]\n"), "cannot tell what this file is; pass --kind"),
    "validate: missing file": Case(_plain("validate", "./no-such.yaml"), "no-such.yaml"),
    "validate: YAML syntax error": Case(_validate("recipes/bad.yaml", "name: [oops\n"), "not valid YAML"),
    "validate: device profile unknown key": Case(lambda r, i: _validate("devices/x.yaml", _shipped_device() + "colour: red\n")(r, i), "colour: unknown key"),
    "validate: empty file": Case(_validate("recipes/empty.yaml", ""), "empty"),
    "recipes: unknown name": Case(_plain("recipes", "int2-dreams"), "int2-dreams"),
    "devices: unknown name": Case(_plain("devices", "nokia-3310"), "nokia-3310"),
    # --- bundle --------------------------------------------------------------------------------------------------
    "bundle: manifest lists ../ tokenizer file": Case(_on("bundle", _manifest(_escape_manifest("tokenizer")), "--out", OUT), "is not a path relative to the manifest's folder"),
    "bundle: manifest lists an absolute file": Case(_on("bundle", _manifest(_escape_manifest("artifact")), "--out", OUT), "is not a path relative to the manifest's folder"),
    "bundle: artifact path climbs out": Case(_on("bundle", _manifest(_escape_manifest("path")), "--out", OUT), "is not a path relative to the manifest's folder"),
    "bundle: --out inside the export": Case(_in_export, "inside the export folder"),
    "bundle: read-only parent of --out": Case(_read_only_parent("bundle"), "cannot write"),
    "bundle: disk full": Case(_disk_full, "No space left on device"),
    "bundle: no manifest": Case(_on("bundle", lambda r, i: (i.export() / "manifest.json").unlink() or r / "export", "--out", OUT), "manifest.json does not exist"),
    "bundle: manifest not JSON": Case(_on("bundle", lambda r, i: (i.export() / "manifest.json").write_text("{") and r / "export", "--out", OUT), "not valid JSON"),
    "bundle: failed parity": Case(_on("bundle", _manifest(lambda m: m["artifacts"][0]["parity"].update(status="failed")), "--out", OUT), "failed parity", code=1),
    # --- verify ----------------------------------------------------------------------------------------------------
    "verify: garbage zip": Case(lambda r, i: ["verify", str(i.file("b.zip", b"PK\x03\x04 not really"))], "is not a readable zip"),
    "verify: truncated zip": Case(lambda r, i: ["verify", str(i.file("b.zip", (i.bundle() / "ios.zip").read_bytes()[:2000]))], "is not a readable zip"),
    "verify: a text file": Case(lambda r, i: ["verify", str(i.file("notes.txt", "hi"))], "neither a bundle folder nor a .zip"),
    "verify: zip bomb": Case(_bomb, "a zip bomb", code=1),
    "verify: zip entry climbs out": Case(_zip({"manifest.json": b"{}", "../../evil.txt": b"x"}), "outside the bundle folder", code=1),
    "verify: zip member with a bad CRC": Case(_bad_crc, "data.bin: unreadable, not scanned (Bad CRC-32", code=1),
    "verify: zip holds a link": Case(_zip({"manifest.json": b"{}"}, link="tokenizer/tokenizer.json"), "a symbolic link", code=1),
    # --- route -------------------------------------------------------------------------------------------------------
    "route: device state a list": Case(_route([]), "expected a mapping"),
    "route: device state a string": Case(_route('"iphone"'), "expected a mapping"),
    "route: device state a number": Case(_route("42"), "expected a mapping"),
    "route: request a list": Case(_route({}, request=[1]), "expected a mapping"),
    "route: unknown device": Case(_route({"device": "nokia-3310"}), "nokia-3310"),
    # --- matrix ------------------------------------------------------------------------------------------------------
    "matrix: unknown key": Case(_matrix("models: [x]\nrecipes: [fp32]\ntargets: [onnx]\nout: o\ncolour: red\n"), "colour: unknown key"),
    "matrix: missing config": Case(_plain("matrix", "./no-such-matrix.yaml"), "no-such-matrix.yaml"),
    "matrix: shard out of range": Case(_matrix("models: [x]\nrecipes: [fp32]\ntargets: [onnx]\nout: o\n", "--shard", "3/2"), "--shard"),
}  # fmt: skip


@pytest.fixture(scope="module")
def shared(tiny_checkpoint, tmp_path_factory):
    export = make_export(tmp_path_factory.mktemp("hostile") / "export")
    write_manifest(export)
    return tiny_checkpoint("llama"), export


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def test_the_catalogue_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, shared, tmp_path, monkeypatch):
    case = CASES[name]
    inputs = Inputs(tmp_path / "in", *shared)
    inputs.root.mkdir()
    out = tmp_path / "out"
    argv = [str(out) if a == OUT else a for a in case.build(inputs.root, inputs)]
    if name == "bundle: disk full":
        _fill_disk_at_first_copy(monkeypatch)
    if "read-only" in name:
        _read_only(monkeypatch)
    before = _snapshot(inputs.root)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, argv)
    for locked in inputs.root.rglob("locked"):
        locked.chmod(0o755)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == case.code, f"{argv}\n{result.output}"
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert lines and lines[0].startswith("error: "), result.stderr
    if case.code == 2:
        assert len(lines) == 1, result.stderr
    assert case.says in result.stderr, result.stderr
    assert not out.exists(), "nothing at the output path"
    assert not [p.name for p in tmp_path.rglob(".*tmp*")], "no temporary sibling left behind"
    assert _snapshot(inputs.root) == before, "nothing outside the output changed"


def _fill_disk_at_first_copy(monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", full)


def _read_only(monkeypatch):
    """chmod 555 does not stop root (CI runs as root): creating anything under a folder named ``locked`` fails
    as the kernel would fail it for a user without write permission."""
    import errno
    import pathlib

    mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if "locked" in self.parts[:-1]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
