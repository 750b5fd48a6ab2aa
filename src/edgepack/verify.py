"""``edgepack verify``: is a bundle fit to ship?

Checks, all reported together: the manifest matches its schema; every file it lists is present with its
bytes and sha256 (and each artifact's own digest); a bundle holds nothing the manifest does not list; every
artifact passed parity; no secret (tokens, Authorization headers, private keys) anywhere in any file.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import ManifestError, VerifyError
from edgepack.manifest import MANIFEST_FILE, path_digest, read_manifest, sha256_file
from edgepack.secrets import scan_file


@dataclass
class VerifyReport:
    path: str
    kind: str  # "bundle" (has a platform) or "export"
    files_checked: int = 0
    bytes_checked: int = 0
    artifacts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(path: str | Path, *, allow_no_parity: bool = False) -> VerifyReport:
    """Verify a bundle folder, a bundle .zip or an export folder; raise VerifyError listing every problem."""
    path = Path(path)
    if path.suffix == ".zip" and path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            _extract(path, Path(tmp))
            report = _verify_folder(Path(tmp), str(path), allow_no_parity)
    elif path.is_dir():
        report = _verify_folder(path, str(path), allow_no_parity)
    else:
        raise ManifestError(
            f"{path} is neither a bundle folder nor a .zip. Pass what `edgepack bundle` wrote."
        )
    if report.problems:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        raise VerifyError(f"{path} failed verification: {len(report.problems)} problem(s)\n{lines}")
    return report


def check_files(root: Path, manifest: dict) -> list[str]:
    """Problems with the files the manifest lists: missing, wrong size, wrong digest."""
    problems = []
    entries = manifest["tokenizer"]["files"] + [f for a in manifest["artifacts"] for f in a["files"]]
    for e in entries:
        problems += _check_entry(root, e)
    for a in manifest["artifacts"]:
        full = root / a["path"]
        if full.exists() and not any(p.startswith(a["path"]) for p in problems):
            actual = path_digest(root, a["path"], a["files"])
            if actual != a["sha256"]:
                problems.append(
                    f"{a['path']}: artifact sha256 {actual[:12]}... != manifest {a['sha256'][:12]}..."
                )
    return problems


def _check_entry(root: Path, e: dict) -> list[str]:
    full = root / e["path"]
    if not full.is_file():
        return [f"{e['path']}: missing (the manifest lists it)"]
    size = full.stat().st_size
    if size != e["bytes"]:
        return [f"{e['path']}: {size} bytes, manifest says {e['bytes']}"]
    digest = sha256_file(full)
    if digest != e["sha256"]:
        return [
            f"{e['path']}: sha256 {digest[:12]}... != manifest {e['sha256'][:12]}... (changed after export)"
        ]
    return []


def _verify_folder(root: Path, shown: str, allow_no_parity: bool) -> VerifyReport:
    report = VerifyReport(shown, "export")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    try:
        manifest = read_manifest(root / MANIFEST_FILE)
    except ManifestError as exc:
        report.problems.append(str(exc))
        manifest = None
    if manifest is not None:
        report.kind = "bundle" if "bundle" in manifest else "export"
        report.artifacts = [a["path"] for a in manifest["artifacts"]]
        report.problems += check_files(root, manifest)
        report.problems += _parity(manifest, allow_no_parity)
        if report.kind == "bundle":
            report.problems += _unlisted(root, files, manifest)
    for f in files:
        report.problems += [str(s) for s in scan_file(f, f.relative_to(root).as_posix())]
    report.files_checked = len(files)
    report.bytes_checked = sum(f.stat().st_size for f in files)
    return report


def _parity(manifest: dict, allow_no_parity: bool) -> list[str]:
    problems = []
    for a in manifest["artifacts"]:
        status = a["parity"]["status"]
        if status == "failed":
            failed = ", ".join(
                f"{f['metric']} {f['value']} (threshold {f['threshold']})" for f in a["parity"]["failures"]
            )
            problems.append(f"{a['path']}: parity failed: {failed or 'see parity.md'}")
        elif status == "not_run" and not allow_no_parity:
            problems.append(f"{a['path']}: parity was not run (exported with --no-parity); run `edgepack parity` "
                            "on the export and bundle again, or pass --allow-no-parity")  # fmt: skip
    return problems


def _unlisted(root: Path, files: list[Path], manifest: dict) -> list[str]:
    listed = {e["path"] for e in manifest["tokenizer"]["files"]}
    listed |= {f["path"] for a in manifest["artifacts"] for f in a["files"]}
    listed.add(MANIFEST_FILE)
    extra = [f.relative_to(root).as_posix() for f in files if f.relative_to(root).as_posix() not in listed]
    return [f"{p}: not listed in the manifest (a bundle holds only what its manifest lists)" for p in extra]


def _extract(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            target = (dest / name).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise VerifyError(
                    f"{archive}: entry {name!r} escapes the archive folder; refusing to extract it."
                )
        zf.extractall(dest)
