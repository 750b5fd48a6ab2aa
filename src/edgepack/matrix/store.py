"""Where finished cells are kept: the matrix's own folder, or a cache every node can reach.

``FolderStore`` is the default: a cell is exported in place under ``OUT/cells/`` (the pipeline renames a finished
export into place) and marked done by ``OUT/cache/<key>.json``. ``SharedStore`` is a cache root given as a shared
path or an fsspec URL (``/shared/edgepack``, ``file:///shared/edgepack``, ``s3://bucket/edgepack``): a cell
exported on any node is published there and the driver copies it into ``OUT/cells/``.

Publication is atomic in both. The files go first, under a name no other attempt uses
(``objects/<key>/<attempt>/``), then one small record (``cache/<key>.json``) naming them: by rename on a file
system, by a single put on an object store (which S3 and GCS make atomic). The record is the only mark of a
finished cell, so a reader that finds it finds every file it names, and an attempt killed half-way (a dead node, a
killed driver) leaves files no record names: the cell runs again. Two attempts at one cell each publish whole
files; the last record wins.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from edgepack.atomic import atomic_dir, write_json
from edgepack.errors import ConfigError, ExportError

RECORDS = "cache"
OBJECTS = "objects"


class FolderStore:
    """The matrix's own folder: cells in place under ``OUT/cells/``, records in ``OUT/cache/``."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def lookup(self, key: str) -> dict | None:
        path = self.out / RECORDS / f"{key}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if (self.out / record["out"]).is_dir() else None  # output deleted: run it again

    def publish(self, key: str, folder: Path, row: dict) -> dict:
        if folder.resolve() != (self.out / row["out"]).resolve():
            raise ExportError(f"cell {row['cell']} was written to {folder}, not inside the matrix folder {self.out}")
        (self.out / RECORDS).mkdir(parents=True, exist_ok=True)
        write_json(self.out / RECORDS / f"{key}.json", row)
        return row


class SharedStore:
    """A cache root every node reaches: a path or an fsspec URL. Publishes a cell's files, then its record."""

    def __init__(self, url: str):
        import fsspec.core

        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:  # an unknown protocol, or its package (s3fs, gcsfs) missing
            raise ConfigError("--cache", [f"cannot open {url}: {exc}"]) from None
        self.root = self.root.rstrip("/")
        self.local = "file" in _protocols(self.fs)
        # what workers reopen it with: a local path made absolute, so a worker in another folder finds it too
        self.url = f"file://{self.root}" if self.local else url

    def lookup(self, key: str) -> dict | None:
        path = f"{self.root}/{RECORDS}/{key}.json"
        try:
            record = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        return record if self.fs.exists(f"{self.root}/{record['object']}") else None

    def publish(self, key: str, folder: Path, row: dict) -> dict:
        obj = f"{OBJECTS}/{key}/{uuid.uuid4().hex[:12]}"
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
        for rel in files:
            target = f"{self.root}/{obj}/{rel}"
            if self.local:
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(folder / rel), target)
        record = {**row, "object": obj, "files": files}
        data = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()
        path = f"{self.root}/{RECORDS}/{key}.json"
        if self.local:  # a file system: write beside, then rename (atomic within one file system)
            self.fs.makedirs(f"{self.root}/{RECORDS}", exist_ok=True)
            tmp = f"{self.root}/{RECORDS}/.{key}.json.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        else:  # an object store: one put is atomic
            self.fs.pipe_file(path, data)
        return record

    def fetch(self, record: dict, dest: Path) -> None:
        """Copy a published cell into ``dest`` (replacing what is there), whole or not at all."""
        with atomic_dir(dest, ExportError) as tmp:
            for rel, size in record["files"].items():
                local = tmp / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{self.root}/{record['object']}/{rel}", str(local))
                if local.stat().st_size != size:
                    raise ExportError(f"{self.url}: {record['object']}/{rel} is {local.stat().st_size} bytes, "
                                      f"its record says {size}; remove {RECORDS}/{record['key']}.json to rerun the cell")  # fmt: skip


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def open_store(out: Path, cache: str | None) -> FolderStore | SharedStore:
    return SharedStore(cache) if cache else FolderStore(out)
