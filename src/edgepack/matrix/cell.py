"""One cell, as every executor runs it: export (``CellJob`` -> ``run_cell``), then publish to the cell store.

A cell whose publication did not finish is not finished: the driver sees no record and runs it again.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError, ParityError
from edgepack.matrix.config import CELLS_DIR, Cell
from edgepack.matrix.store import open_store

Runner = Callable[[Cell, Path, dict], dict]


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs for one cell, on any node (picklable)."""

    cell: Cell
    key: str
    out: Path  # the matrix folder, as the driver sees it
    options: dict
    memory: int  # bytes: edgepack's estimate of the cell's peak RSS
    cpus: int
    cache: str | None = None  # the shared cache's URL; None: the cell is written into ``out`` and recorded there
    in_place: bool = True  # export into out/cells/... (else into a temporary folder on the worker's node)

    @property
    def rel(self) -> str:
        return f"{CELLS_DIR}/{self.cell.model}/{self.cell.recipe}/{self.cell.target}"


@dataclass
class CellResult:
    row: dict  # the summary's row
    record: dict | None = None  # what the store published (None: failed)
    in_place: bool = True  # the files already sit in the driver's out/cells/...


def export_cell(cell: Cell, out: Path, options: dict) -> dict:
    """The default runner: one pipeline export of one model, recipe and target into ``out``."""
    from edgepack.pipeline import export

    out.parent.mkdir(parents=True, exist_ok=True)
    result = export(cell.source, recipe=options["recipe"], targets=[cell.target], out=out, force=True,
                    max_seq_len=options["max_seq_len"], parity=options["parity"])  # fmt: skip
    return result.summary()


def run_cell(job: CellJob, runner: Runner = export_cell) -> CellResult:
    """Export one cell, then publish it; a cell whose publication did not finish is not finished."""
    staging_root = None if job.in_place else Path(tempfile.mkdtemp(prefix="edgepack-cell-"))
    folder = job.out / job.rel if staging_root is None else staging_root / "cell"
    start = time.perf_counter()
    row = {"cell": job.cell.id, "key": job.key, "out": job.rel}
    record = None
    try:
        row.update(_export(job, runner, folder))
        if row["status"] != "failed":
            record = open_store(job.out, job.cache).publish(job.key, folder, dict(row))
    except OSError as exc:  # the store could not be written: the cell is not finished
        row.update(status="failed", error=f"publishing to {job.cache or job.out}: {exc}")
    finally:
        if staging_root is not None:
            shutil.rmtree(staging_root, ignore_errors=True)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return CellResult(row, record, job.in_place)


def _export(job: CellJob, runner: Runner, folder: Path) -> dict:
    try:
        return {"status": "exported", "result": runner(job.cell, folder, job.options)}
    except ParityError as exc:  # the export is complete and kept; parity is deterministic for a key
        return {"status": "parity-failed", "error": str(exc)}
    except EdgepackError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one crashing backend must not lose the other cells
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def failed_row(job: CellJob, error: str, seconds: float = 0.0) -> CellResult:
    return CellResult({"cell": job.cell.id, "key": job.key, "out": job.rel, "status": "failed", "error": error,
                       "seconds": round(seconds, 2)})  # fmt: skip
