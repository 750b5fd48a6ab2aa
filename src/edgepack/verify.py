"""``edgepack verify``: is a bundle fit to ship?

Checks, all reported together: the manifest matches its schema; every file it lists is present with its
bytes and sha256 (and each artifact's own digest); a bundle holds nothing the manifest does not list; every
artifact passed parity; no secret (tokens, Authorization headers, private keys) anywhere in any file, zips inside
it included; no symbolic link anywhere (a link can point outside the bundle; an app bundle holds files).

A .zip is read in place, member by member as it decompresses, never extracted: entries that would land outside
the folder, links, and members that expand beyond ``secrets.zip_budget`` (a zip bomb) are refused unread.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from edgepack.errors import ManifestError, VerifyError
from edgepack.manifest import MANIFEST_FILE, PARITY_FILE, parity_entry, tree_digest, validate_manifest
from edgepack.secrets import scan_stream, zip_budget

MAX_MANIFEST_BYTES = 16 << 20
UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, zlib.error)


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

    def failure_message(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{self.path} failed verification: {len(self.problems)} problem(s)\n{lines}"

    def raise_problems(self) -> None:
        if self.problems:
            raise VerifyError(self.failure_message())


def verify_bundle(path: str | Path, *, allow_no_parity: bool = False) -> VerifyReport:
    """Verify a bundle folder, a bundle .zip or an export folder; raise VerifyError listing every problem."""
    report = check_bundle(path, allow_no_parity=allow_no_parity)
    report.raise_problems()
    return report


def check_bundle(path: str | Path, *, allow_no_parity: bool = False) -> VerifyReport:
    """The verification report of a bundle folder, a bundle .zip or an export folder, problems included (raises
    only when ``path`` is none of these)."""
    path = Path(path)
    if path.suffix == ".zip" and path.is_file():
        with _ZipTree.read(path) as tree:
            report = _verify(tree, str(path), allow_no_parity)
    elif path.is_dir():
        report = _verify(_FolderTree(path), str(path), allow_no_parity)
    else:
        raise ManifestError(
            f"{path} is neither a bundle folder nor a .zip. Pass what `edgepack bundle` wrote."
        )
    return report


def check_bundles(path: str | Path, *, allow_no_parity: bool = False) -> list[VerifyReport]:
    """One report per bundle: ``path`` itself (a bundle folder, a .zip, an export folder), or, for the folder
    ``edgepack bundle --out`` wrote, each platform folder and zip in it (links are never followed)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and not (path / MANIFEST_FILE).exists():
        found = sorted(
            p for p in path.iterdir()
            if not p.is_symlink() and ((p.is_dir() and (p / MANIFEST_FILE).is_file()) or (p.suffix == ".zip" and p.is_file()))
        )  # fmt: skip
        if found:
            return [check_bundle(p, allow_no_parity=allow_no_parity) for p in found]
    return [check_bundle(path, allow_no_parity=allow_no_parity)]


# --- what is verified: a folder or a zip, read the same way ---------------------------------------------------


class _FolderTree:
    """Regular files under ``root``, walked without following links; each link is a problem."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, int] = {}
        self.problems: list[str] = []
        for folder, dirs, names in os.walk(root):
            for name in sorted(dirs + names):
                full = Path(folder) / name
                rel = full.relative_to(root).as_posix()
                if full.is_symlink():
                    self.problems.append(f"{rel}: a symbolic link (to {os.readlink(full)}); a bundle holds only "
                                         "regular files: replace it with the file itself")  # fmt: skip
                elif full.is_file():
                    self.files[rel] = full.stat().st_size
            dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]

    def open(self, rel: str) -> BinaryIO:
        return (self.root / rel).open("rb")

    def is_folder(self, rel: str) -> bool:
        return (self.root / rel).is_dir() and not (self.root / rel).is_symlink()


class _ZipTree:
    """The members of a zip, read in place; names that escape the folder, links and zip bombs are problems."""

    def __init__(self, zf: zipfile.ZipFile, archive: Path):
        self.zf, self.files, self.problems = zf, {}, []
        budget = zip_budget(zf, archive.stat().st_size)
        if budget:
            self.problems.append(f"{archive.name}: refused unread: {budget}")
            return
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                continue
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                self.problems.append(f"{name!r}: an entry that would land outside the bundle folder; refused")
            elif stat.S_ISLNK(info.external_attr >> 16):
                self.problems.append(f"{name}: a symbolic link; a bundle holds only regular files")
            elif name in self.files:
                self.problems.append(f"{name}: twice in the archive; which one an unzip keeps is undefined")
            else:
                self.files[name] = info.file_size

    @classmethod
    def read(cls, archive: Path) -> _ZipTree:
        try:
            return cls(zipfile.ZipFile(archive), archive)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ManifestError(f"{archive} is not a readable zip ({exc}). Pass the .zip `edgepack bundle` wrote, "
                              "or its folder.") from None  # fmt: skip

    def open(self, rel: str) -> BinaryIO:
        return self.zf.open(rel)

    def is_folder(self, rel: str) -> bool:
        return rel not in self.files and any(f.startswith(rel.rstrip("/") + "/") for f in self.files)

    def __enter__(self) -> _ZipTree:
        return self

    def __exit__(self, *exc) -> None:
        self.zf.close()


# --- the checks ----------------------------------------------------------------------------------------------


def check_files(root: Path, manifest: dict) -> list[str]:
    """Problems with the files the manifest lists in the folder ``root``: missing, wrong size, wrong digest, a
    link. ``bundle`` runs this before copying anything."""
    tree = _FolderTree(root)
    return tree.problems + _check_listed(tree, manifest)


def _check_listed(tree, manifest: dict) -> list[str]:
    problems, digests = [], {}
    entries = manifest["tokenizer"]["files"] + [f for a in manifest["artifacts"] for f in a["files"]]
    for e in entries:
        problem, digests[e["path"]] = _check_entry(tree, e)
        problems += [problem] if problem else []
    for a in manifest["artifacts"]:
        if any(p.startswith(a["path"]) for p in problems):
            continue
        actual = _artifact_digest(tree, a, digests)
        if actual is not None and actual != a["sha256"]:
            problems.append(f"{a['path']}: artifact sha256 {actual[:12]}... != manifest {a['sha256'][:12]}...")
    return problems


def _check_entry(tree, e: dict) -> tuple[str | None, str | None]:
    size = tree.files.get(e["path"])
    if size is None:
        return f"{e['path']}: missing (the manifest lists it)", None
    if size != e["bytes"]:
        return f"{e['path']}: {size} bytes, manifest says {e['bytes']}", None
    h = hashlib.sha256()
    try:
        with tree.open(e["path"]) as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    except UNREADABLE as exc:
        return f"{e['path']}: unreadable ({exc})", None
    if h.hexdigest() != e["sha256"]:
        return f"{e['path']}: sha256 {h.hexdigest()[:12]}... != manifest {e['sha256'][:12]}... (changed after export)", None
    return None, e["sha256"]


def _artifact_digest(tree, artifact: dict, digests: dict) -> str | None:
    """The artifact's digest from its files' (a file: its own; a folder: ``manifest.tree_digest``)."""
    rel = artifact["path"]
    if rel in tree.files:
        return digests.get(rel)
    if not tree.is_folder(rel):
        return None
    prefix = rel.rstrip("/") + "/"
    inner = [{"path": e["path"][len(prefix):], "sha256": e["sha256"]} for e in artifact["files"]
             if e["path"].startswith(prefix)]  # fmt: skip
    return tree_digest(inner)


def _verify(tree, shown: str, allow_no_parity: bool) -> VerifyReport:
    report = VerifyReport(shown, "export", problems=list(tree.problems))
    manifest = _manifest(tree, report)
    if manifest is not None:
        report.kind = "bundle" if "bundle" in manifest else "export"
        report.artifacts = [a["path"] for a in manifest["artifacts"]]
        report.problems += _check_listed(tree, manifest)
        report.problems += _parity(manifest, allow_no_parity)
        report.problems += _parity_record_agrees(tree, manifest)
        if report.kind == "bundle":
            report.problems += _unlisted(tree.files, manifest)
    for rel in sorted(tree.files):
        try:
            with tree.open(rel) as fh:
                report.problems += [str(s) for s in scan_stream(fh, rel)]
        except UNREADABLE as exc:  # a damaged member (bad CRC, truncated data) of an otherwise readable zip
            report.problems.append(f"{rel}: unreadable, not scanned ({exc})")
    report.files_checked = len(tree.files)
    report.bytes_checked = sum(tree.files.values())
    return report


def _manifest(tree, report: VerifyReport) -> dict | None:
    size = tree.files.get(MANIFEST_FILE)
    if size is None:
        report.problems.append(f"{MANIFEST_FILE} does not exist. Pass a bundle folder, its .zip or an export folder.")
        return None
    if size > MAX_MANIFEST_BYTES:
        report.problems.append(f"{MANIFEST_FILE}: {size} bytes; a manifest is a few KB (not read)")
        return None
    with tree.open(MANIFEST_FILE) as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8"))
        validate_manifest(data, MANIFEST_FILE)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problems.append(f"{MANIFEST_FILE} is not valid JSON ({exc}).")
        return None
    except ManifestError as exc:
        report.problems.append(str(exc))
        return None
    return data


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


def _parity_record_agrees(tree, manifest: dict) -> list[str]:
    """An export folder's parity.json is the latest check: the manifest must say what it says, artifact by
    artifact (a manifest left saying "passed" after a failed re-check is the problem this catches)."""
    size = tree.files.get(PARITY_FILE)
    if size is None:
        return []
    if size > MAX_MANIFEST_BYTES:
        return [f"{PARITY_FILE}: {size} bytes; a parity record is a few KB (not read)"]
    try:
        with tree.open(PARITY_FILE) as fh:
            record = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{PARITY_FILE} is not valid JSON ({exc})."]
    problems = []
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    for entry in record.get("artifacts", []) if isinstance(record, dict) else []:
        path = entry.get("path") if isinstance(entry, dict) else None
        latest = parity_entry(record, entry.get("target"), path) if path else None
        if latest is None:
            continue
        listed = by_path.get(path)
        if listed is None:
            problems.append(f"{PARITY_FILE} checked {path}, which {MANIFEST_FILE} does not list; re-run the export")
        elif listed["parity"]["status"] != latest["status"]:
            problems.append(
                f"{path}: {MANIFEST_FILE} says parity {listed['parity']['status']} but the latest check "
                f"({PARITY_FILE}) {latest['status']}; run `edgepack parity` on the export again"
            )
    return problems


def _unlisted(files: dict[str, int], manifest: dict) -> list[str]:
    listed = {e["path"] for e in manifest["tokenizer"]["files"]}
    listed |= {f["path"] for a in manifest["artifacts"] for f in a["files"]}
    listed.add(MANIFEST_FILE)
    return [f"{p}: not listed in the manifest (a bundle holds only what its manifest lists)"
            for p in sorted(files) if p not in listed]  # fmt: skip
