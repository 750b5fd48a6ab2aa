"""Bundles are byte-identical across runs; verify passes on a fresh one and fails (exit 1) on tampering."""

from __future__ import annotations

import hashlib
import os
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.bundle import write_bundle
from edgepack.cli import main
from edgepack.errors import ManifestError, ParityError, VerifyError
from edgepack.manifest import write_manifest
from fake_export import make_export

HF_TOKEN = "hf_" + "Zq3" * 12  # built at run time so this file holds no token-shaped literal


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = make_export(tmp_path_factory.mktemp("export") / "out")
    write_manifest(root)
    return root


def _tree(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime)
            for p in sorted(folder.rglob("*"))  if p.is_file()}  # fmt: skip


def _bundle(export, out, *args):
    result = CliRunner().invoke(main, ["bundle", str(export), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def _verify(path, *args):
    return CliRunner().invoke(main, ["verify", str(path), *args])


def test_two_runs_are_byte_identical(export, tmp_path):
    a = _bundle(export, tmp_path / "a")
    b = _bundle(export, tmp_path / "b")
    for platform in ("ios", "android"):
        assert _tree(a / platform) == _tree(b / platform)
        assert (a / f"{platform}.zip").read_bytes() == (b / f"{platform}.zip").read_bytes()
    digest = hashlib.sha256((a / "ios.zip").read_bytes()).hexdigest()
    again = _bundle(export, tmp_path / "a", "--force")  # replacing an existing bundle gives the same bytes
    assert hashlib.sha256((again / "ios.zip").read_bytes()).hexdigest() == digest


def test_platform_contents(export, tmp_path):
    out = _bundle(export, tmp_path / "b")
    ios = sorted(_tree(out / "ios"))
    assert "manifest.json" in ios and "tokenizer/tokenizer.json" in ios
    assert all(not p.startswith(("onnx/", "executorch/")) for p in ios)
    assert any(p.startswith("coreml/model.mlpackage/") for p in ios)
    android = sorted(_tree(out / "android"))
    assert {"executorch/model.pte", "onnx/model.onnx", "onnx/model.onnx.data"} <= set(android)
    assert not any(p.startswith("coreml/") for p in android)
    manifest = json.loads((out / "android/manifest.json").read_text())
    assert manifest["bundle"] == {"platform": "android"}
    assert [a["target"] for a in manifest["artifacts"]] == ["executorch", "onnx"]
    with zipfile.ZipFile(out / "android.zip") as zf:
        assert zf.namelist() == android  # sorted, no prefix
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in zf.infolist()} == {0o100644}
    assert {oct(p.stat().st_mode & 0o777) for p in (out / "ios").rglob("*") if p.is_file()} == {"0o644"}


def test_verify_passes_on_fresh_bundle_folder_and_zip(export, tmp_path):
    out = _bundle(export, tmp_path / "b")
    for path in (out / "ios", out / "android", out / "ios.zip", out / "android.zip"):
        result = _verify(path)
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"ok: {path} (bundle)")


def test_verify_on_the_bundle_out_folder_verifies_every_bundle_in_it(export, tmp_path):
    out = _bundle(export, tmp_path / "a" / "b" / "bundles")  # missing parents are created
    result = _verify(out)
    assert result.exit_code == 0, result.output
    assert [line.split(" (")[0] for line in result.output.splitlines()] == [
        f"ok: {out / name}" for name in ("android", "android.zip", "ios", "ios.zip")]  # fmt: skip
    as_json = json.loads(_verify(out, "--json").stdout)
    assert as_json["ok"] and len(as_json["bundles"]) == 4
    (out / "ios" / "manifest.json").write_text("{}")
    failed = _verify(out)
    assert failed.exit_code == 1 and f"{out / 'ios'} failed verification" in failed.output
    assert "android" not in failed.output.split("error:", 1)[1]


def test_bundles_store_the_tokenizer_once_and_split_per_runtime(export, tmp_path):
    """The Android bundle keeps one copy of each tokenizer file (ONNX's genai folder holds them; the manifest points
    there); --runtime writes a bundle of one runtime's artifacts, which verifies on its own."""
    out = _bundle(export, tmp_path / "all")
    android = json.loads((out / "android/manifest.json").read_text())
    runtime_files = android["tokenizer"]["runtime_files"]
    assert all((out / "android" / path).is_file() for path in runtime_files.values())
    names = [p.name for p in (out / "android").rglob("tokenizer.json")]
    assert names == ["tokenizer.json"]  # once
    pte = _bundle(export, tmp_path / "pte", "--platform", "android", "--runtime", "executorch")
    manifest = json.loads((pte / "android/manifest.json").read_text())
    assert [a["target"] for a in manifest["artifacts"]] == ["executorch"]
    assert manifest["bundle"] == {"platform": "android", "runtime": "executorch"}
    assert not (pte / "android/onnx").exists() and (pte / "android/tokenizer/tokenizer.json").is_file()
    assert _verify(pte).exit_code == 0
    refused = CliRunner().invoke(main, ["bundle", str(export), "--out", str(tmp_path / "x"), "--platform", "ios",
                                        "--runtime", "executorch"])  # fmt: skip
    assert refused.exit_code == 2 and "ios bundles hold coreml, mlx artifacts; --runtime executorch has none" in refused.output


def test_verify_fails_on_planted_token(export, tmp_path):
    out = _bundle(export, tmp_path / "b")
    config = out / "android/onnx/genai_config.json"
    config.write_text(config.read_text().replace('"model"', f'"api": "{HF_TOKEN}", "model"', 1))
    (out / "android/notes.txt").write_text("curl -H 'Authorization: Bearer abcdefgh12345678' ...")
    pem = out / "android/onnx/tokenizer.json"
    pem.write_bytes(pem.read_bytes() + b"\n-----BEGIN RSA PRIVATE KEY-----\n")
    result = _verify(out / "android")
    assert result.exit_code == 1
    assert "onnx/genai_config.json (byte 12): Hugging Face token 'hf_Zq3...' (39 chars)" in result.output
    assert "notes.txt (byte 9): Authorization header" in result.output
    assert "onnx/tokenizer.json" in result.output and "private key" in result.output
    assert "notes.txt: not listed in the manifest" in result.output
    assert HF_TOKEN not in result.output


def test_verify_fails_on_changed_byte_and_missing_file(export, tmp_path):
    out = _bundle(export, tmp_path / "b")
    pte = out / "android/executorch/model.pte"
    data = bytearray(pte.read_bytes())
    data[100] ^= 1
    pte.write_bytes(bytes(data))
    weight = next((out / "ios").rglob("weight.bin"))
    weight.unlink()
    changed = _verify(out / "android")
    assert changed.exit_code == 1
    assert "executorch/model.pte: sha256" in changed.output and "(changed after export)" in changed.output
    missing = _verify(out / "ios")
    assert missing.exit_code == 1
    assert "coreml/model.mlpackage/Data/com.apple.CoreML/weights/weight.bin: missing" in missing.output


def test_verify_fails_on_parity(tmp_path):
    failed = make_export(tmp_path / "failed", parity="failed")
    write_manifest(failed)
    with pytest.raises(ParityError, match="onnx/model.onnx failed parity"):
        write_bundle(failed, tmp_path / "x", "android")
    out = _bundle(failed, tmp_path / "b", "--platform", "android", "--allow-failed-parity")
    result = _verify(out / "android")
    assert (
        result.exit_code == 1
        and "onnx/model.onnx: parity failed: cosine 0.91 (threshold 0.99)" in result.output
    )
    assert _verify(out.parent / "b/android").exit_code == 1
    unrun = make_export(tmp_path / "unrun", parity=None)
    write_manifest(unrun)
    out = _bundle(unrun, tmp_path / "c", "--platform", "ios")
    assert "parity was not run" in _verify(out / "ios").output
    assert _verify(out / "ios", "--allow-no-parity").exit_code == 0


def test_bundle_errors(export, tmp_path):
    only_android = make_export(tmp_path / "ex", targets=("executorch",))
    write_manifest(only_android)
    with pytest.raises(ManifestError, match="has no coreml or mlx artifact for ios. Export with --target coreml"):
        write_bundle(only_android, tmp_path / "o", "ios")
    assert [b.platform for b in write_bundle(only_android, tmp_path / "o", "all")] == ["android"]
    result = CliRunner().invoke(main, ["bundle", str(only_android), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "already exists. Delete it, pass --force" in result.output
    # A source export that changed after its manifest was written is refused before anything is copied.
    tampered = tmp_path / "t"
    shutil.copytree(export, tampered)
    (tampered / "tokenizer/chat_template.jinja").write_text("changed")
    result = CliRunner().invoke(main, ["bundle", str(tampered), "--out", str(tmp_path / "never")])
    assert result.exit_code == 1 and "no longer matches its manifest" in result.output
    assert not (tmp_path / "never").exists()


# --- hostile bundles: links, climbing paths, zip bombs, secrets in other clothes --------------------------------


def test_bundle_refuses_a_manifest_that_climbs_out_and_reads_nothing_outside(export, tmp_path):
    """A manifest listing ../../etc/hostname (or an absolute path) is refused before anything is read or written."""
    for bad in ("../../../../etc/hostname", "/etc/hostname", "tokenizer/../../x"):
        tampered = shutil.copytree(export, tmp_path / "t", dirs_exist_ok=True)
        manifest = json.loads((tampered / "manifest.json").read_text())
        manifest["tokenizer"]["files"][0]["path"] = bad
        (tampered / "manifest.json").write_text(json.dumps(manifest))
        for argv in (["bundle", str(tampered), "--out", str(tmp_path / "o")], ["verify", str(tampered)]):
            result = CliRunner().invoke(main, argv)
            assert result.exit_code in (1, 2) and "is not a path relative to the manifest's folder" in result.output
        assert not (tmp_path / "o").exists()


def test_verify_flags_links_and_never_follows_them(export, tmp_path):
    out = _bundle(export, tmp_path / "b")
    android = out / "android"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.txt").write_text(f"token {HF_TOKEN}")
    (android / "extra").symlink_to(outside, target_is_directory=True)
    listed = android / "onnx/tokenizer.json"
    (outside / "tokenizer.json").write_bytes(listed.read_bytes())  # same bytes: the digest alone would pass
    listed.unlink()
    listed.symlink_to(outside / "tokenizer.json")
    result = _verify(android)
    assert result.exit_code == 1
    assert f"extra: a symbolic link (to {outside})" in result.output
    assert f"onnx/tokenizer.json: a symbolic link (to {outside / 'tokenizer.json'})" in result.output
    assert "leak.txt" not in result.output, "a linked folder is flagged, not walked"
    with pytest.raises(VerifyError, match="a symbolic link"):  # bundle refuses a linked export file as well
        export_copy = shutil.copytree(export, tmp_path / "e", symlinks=True)
        target = export_copy / "tokenizer/tokenizer.json"
        (outside / "t2.json").write_bytes(target.read_bytes())
        target.unlink()
        target.symlink_to(outside / "t2.json")
        write_bundle(export_copy, tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("form", ["word byte before it", "escaped JSON header", "UTF-16 LE", "UTF-16 BE", "nested zip"])
def test_verify_finds_a_secret_in_every_form(export, tmp_path, form):
    out = _bundle(export, tmp_path / "b")
    android = out / "android"
    header = '{"headers": "{\\"Authorization\\": \\"Bearer abcdefgh12345678\\"}"}'
    planted = android / "planted.bin"
    if form == "word byte before it":
        planted.write_bytes(b"\x00\x07xyz" + HF_TOKEN.encode() + b"\x00")
    elif form == "escaped JSON header":
        planted.write_text(header)
    elif form == "UTF-16 LE":
        planted.write_bytes(f"key: {HF_TOKEN}\n".encode("utf-16-le"))
    elif form == "UTF-16 BE":
        planted.write_bytes(f"key: {HF_TOKEN}\n".encode("utf-16-be"))
    else:
        inner = tmp_path / "inner.zip"
        with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("deep/config.json", f'{{"token": "{HF_TOKEN}"}}')
        with zipfile.ZipFile(planted, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(inner, "inner.zip")
    result = _verify(android)
    assert result.exit_code == 1
    kind = "Authorization header" if form == "escaped JSON header" else "Hugging Face token"
    where = "planted.bin!inner.zip!deep/config.json" if form == "nested zip" else "planted.bin"
    assert f"{where} (byte" in result.output and kind in result.output, result.output
    assert HF_TOKEN not in result.output


def test_verify_reads_a_zip_in_place_and_refuses_a_bomb_unread(export, tmp_path):
    """A fresh bundle's zip verifies without extracting anything; a 1 MB zip of 1 GiB is refused at once."""
    import time

    out = _bundle(export, tmp_path / "b")
    before = set(Path(tempfile_dir()).iterdir())
    assert _verify(out / "android.zip").exit_code == 0
    assert set(Path(tempfile_dir()).iterdir()) == before, "nothing extracted to disk"
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.bin", "w", force_zip64=True) as member:
            for _ in range(64):
                member.write(bytes(1 << 24))
    start = time.perf_counter()
    result = _verify(bomb)
    assert result.exit_code == 1 and "a zip bomb" in result.output
    assert time.perf_counter() - start < 5


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_stale_temporary_folders_of_killed_runs_are_removed_and_reported(export, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: its temporary folders are stale
    out = tmp_path / "b"
    for kind in ("tmp", "old"):
        stale = tmp_path / f".b.{kind}-{pid}"
        stale.mkdir()
        (stale / "half-written.bin").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".b.tmp-{os.getppid()}"  # a running process's folder is left alone
    alive.mkdir()
    messages = []
    write_bundle(export, out, say=messages.append)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")) == [alive.name]
    assert messages == [f"removed 2 temporary folder(s) left by killed runs beside b: .b.old-{pid}, .b.tmp-{pid}"]
