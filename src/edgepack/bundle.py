"""``edgepack bundle``: per-platform app bundles (a folder and a zip each) from an export folder.

iOS gets the Core ML package, Android the .pte and the ONNX model (``runtime``: only one runtime's artifacts);
both get the tokenizer and a manifest narrowed to their artifacts. A tokenizer file with a byte-identical copy among
the bundle's artifact files (the ONNX genai folder holds tokenizer.json and its config) is stored once, there: the
manifest's tokenizer section points at that copy. Identical inputs give byte-identical outputs: files in sorted order, fixed
timestamps and permissions, a fixed compression level. The export is checked against its manifest before
anything is copied, and OUT appears all at once (``edgepack.atomic``).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.atomic import atomic_dir
from edgepack.backends import platform_targets, runtime_names
from edgepack.errors import ManifestError, ParityError, VerifyError
from edgepack.atomic import write_json
from edgepack.manifest import MANIFEST_FILE, read_manifest, validate_manifest

EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can hold
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class Bundle:
    platform: str
    folder: Path
    zip: Path
    files: int
    bytes: int
    artifacts: list[str]


def write_bundle(
    export_root: str | Path, out: str | Path, platform: str = "all", *, force: bool = False,
    allow_failed_parity: bool = False, runtime: str | None = None, say=lambda message: None,
) -> list[Bundle]:  # fmt: skip
    """Write OUT/<platform>/ and OUT/<platform>.zip for each platform (holding only ``runtime``'s artifacts when
    given); returns what was written."""
    from edgepack.verify import check_files

    root, out = Path(export_root), Path(out)
    manifest = read_manifest(root)
    if runtime is not None:
        manifest = _one_runtime(manifest, runtime, platform, root)
    problems = check_files(root, manifest)
    if problems:
        raise VerifyError(
            f"{root} no longer matches its manifest; re-export it:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    platforms = _platforms(platform, manifest, root)
    _check_parity(manifest, platforms, allow_failed_parity)
    if out.exists() and not force:
        raise ManifestError(f"{out} already exists. Delete it, pass --force, or choose another --out.")
    if out.resolve().is_relative_to(root.resolve()):
        raise ManifestError(f"--out {out} is inside the export folder {root}; a bundle beside the export it copies "
                            "would be copied into the next one. Choose a folder outside it.")  # fmt: skip
    with atomic_dir(out, ManifestError, say) as tmp:
        bundles = [_write_platform(root, manifest, p, tmp) for p in platforms]
    return [
        Bundle(b.platform, out / b.platform, out / f"{b.platform}.zip", b.files, b.bytes, b.artifacts)
        for b in bundles
    ]


def _platforms(platform: str, manifest: dict, root: Path) -> list[str]:
    PLATFORMS = platform_targets()
    if platform not in (*PLATFORMS, "all"):
        raise ManifestError(f"Unknown platform {platform!r}. Choose {', '.join(PLATFORMS)} or all.")
    targets = {a["target"] for a in manifest["artifacts"]}
    wanted = list(PLATFORMS) if platform == "all" else [platform]
    usable = [p for p in wanted if targets & set(PLATFORMS[p])]
    if platform != "all" and not usable:
        needs = " or ".join(PLATFORMS[platform])
        raise ManifestError(
            f"{root} has no {needs} artifact for {platform}. Export with --target {PLATFORMS[platform][0]}."
        )
    if not usable:
        raise ManifestError(f"{root} has no artifact for any platform.")
    return usable


def _one_runtime(manifest: dict, runtime: str, platform: str, root: Path) -> dict:
    PLATFORMS = platform_targets()
    if runtime not in runtime_names():
        raise ManifestError(f"Unknown runtime {runtime!r}. Choose {', '.join(runtime_names())}.")
    artifacts = [a for a in manifest["artifacts"] if a["runtime"] == runtime]
    if platform in PLATFORMS and not {a["target"] for a in artifacts} & set(PLATFORMS[platform]):
        raise ManifestError(f"{platform} bundles hold {', '.join(PLATFORMS[platform])} artifacts; --runtime {runtime} "
                            "has none of them. Choose another --platform or --runtime.")  # fmt: skip
    if not artifacts:
        have = ", ".join(sorted({a["runtime"] for a in manifest["artifacts"]}))
        raise ManifestError(f"{root} has no {runtime} artifact (it has {have}). Export the target that runs on it.")
    return {**manifest, "artifacts": artifacts, "bundle_runtime": runtime}


def _check_parity(manifest: dict, platforms: list[str], allow_failed: bool) -> None:
    targets = {t for p in platforms for t in platform_targets()[p]}
    failed = [
        a["path"]
        for a in manifest["artifacts"]
        if a["target"] in targets and a["parity"]["status"] == "failed"
    ]
    if failed and not allow_failed:
        raise ParityError(
            f"{', '.join(failed)} failed parity (see parity.md); refusing to bundle. Pass --allow-failed-parity "
            "to bundle anyway (verify will still fail)."
        )


def platform_manifest(manifest: dict, platform: str) -> dict:
    """The manifest narrowed to one platform's artifacts (and the devices that use them or the cloud)."""
    manifest = dict(manifest)
    runtime = manifest.pop("bundle_runtime", None)
    artifacts = [a for a in manifest["artifacts"] if a["target"] in platform_targets()[platform]]
    paths = {a["path"] for a in artifacts}
    devices = [d for d in manifest["devices"] if d["artifact"] is None or d["artifact"] in paths]
    bundle = {"platform": platform, **({"runtime": runtime} if runtime else {})}
    narrowed = {**manifest, "artifacts": artifacts, "devices": devices, "bundle": bundle,
                "tokenizer": _tokenizer_once(manifest["tokenizer"], artifacts)}  # fmt: skip
    validate_manifest(narrowed, f"{platform} manifest")
    return narrowed


def _tokenizer_once(tokenizer: dict, artifacts: list[dict]) -> dict:
    """The tokenizer section with each file that an artifact also holds, byte for byte under the same name, listed
    there only: the bundle stores it once."""
    copies = {(f["sha256"], Path(f["path"]).name): f["path"] for a in artifacts for f in a["files"]}
    moved = {e["path"]: copies[(e["sha256"], Path(e["path"]).name)] for e in tokenizer["files"]
             if (e["sha256"], Path(e["path"]).name) in copies}  # fmt: skip
    if not moved:
        return tokenizer
    out = {**tokenizer, "files": [e for e in tokenizer["files"] if e["path"] not in moved]}
    if tokenizer.get("runtime_files"):
        out["runtime_files"] = {k: moved.get(v, v) for k, v in tokenizer["runtime_files"].items()}
    if tokenizer.get("chat_template"):
        out["chat_template"] = {**tokenizer["chat_template"], "path": moved.get(tokenizer["chat_template"]["path"],
                                                                              tokenizer["chat_template"]["path"])}  # fmt: skip
    return out


def _write_platform(root: Path, manifest: dict, platform: str, tmp: Path) -> Bundle:
    narrowed = platform_manifest(manifest, platform)
    folder = tmp / platform
    rels = [e["path"] for e in narrowed["tokenizer"]["files"]]
    rels += [f["path"] for a in narrowed["artifacts"] for f in a["files"]]
    for rel in sorted(set(rels)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, folder / rel)
    write_json(folder / MANIFEST_FILE, narrowed)
    _normalise(folder)
    files = _zip(folder, tmp / f"{platform}.zip")
    size = sum((folder / f).stat().st_size for f in files)
    return Bundle(
        platform,
        folder,
        tmp / f"{platform}.zip",
        len(files),
        size,
        [a["path"] for a in narrowed["artifacts"]],
    )


def _normalise(folder: Path) -> None:
    """Fixed permissions and timestamps, so copies of the folder compare equal too."""
    for path in sorted(folder.rglob("*"), reverse=True):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.utime(path, (EPOCH, EPOCH))
    os.chmod(folder, 0o755)
    os.utime(folder, (EPOCH, EPOCH))


def _zip(folder: Path, archive: Path) -> list[str]:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, whatever the host
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = (folder / rel).stat().st_size  # lets zipfile pick zip64 up front for big files
            with open(folder / rel, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    os.chmod(archive, 0o644)
    os.utime(archive, (EPOCH, EPOCH))
    return files
