"""Running a matrix: the cells not in the cache, on local worker processes or on Ray, into one summary.

Both executors run the same ``run_cell``: export one cell (a ``CellJob``), then publish it to the cell store
(``edgepack.matrix.store``); only then is the cell finished. The driver takes results as they come, copies a cell
published elsewhere into ``OUT/cells/``, fits each artifact to the devices and writes ``OUT/matrix.json``. A matrix
killed half-way (driver, worker or node) reruns exactly the cells that have no record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from edgepack import __version__
from edgepack.export_record import is_export_folder
from edgepack.matrix.cell import CellJob, CellResult, Runner, export_cell, run_cell
from edgepack.matrix.config import (
    SUMMARY_FILE,
    Cell,
    Matrix,
    cell_keys,
    cell_memory,
    checkpoints,
    recipe_ref,
    select,
)
from edgepack.atomic import write_json
from edgepack.matrix.store import FolderStore, SharedStore

Executor = Literal["local", "ray"]

# --- executors ---------------------------------------------------------------------------------------------


class LocalExecutor:
    """Cells on this machine: in this process (one worker) or in spawned worker processes."""

    remote_nodes = False

    def __init__(self, workers: int = 1):
        self.workers = workers

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def check(self, jobs: list[CellJob]) -> None:
        pass  # the local executor runs what it is given, one cell per worker

    def run(self, jobs: list[CellJob], runner: Runner) -> Iterator[CellResult]:
        workers = min(self.workers, len(jobs)) or 1
        if workers <= 1:
            for job in jobs:
                yield run_cell(job, runner)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from edgepack.logs import libraries_quieted

        # spawn: torch and the backends do not survive fork reliably.
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, libraries_quieted())) as pool:  # fmt: skip
            for future in as_completed([pool.submit(run_cell, job, runner) for job in jobs]):
                yield future.result()


def _init_worker(threads: int, quiet: bool) -> None:
    """A spawned worker: its share of the cores (each torch would otherwise start one thread per core: 2 workers on
    2 cores took 138 s for a matrix 1 worker ran in 80 s), and as quiet as the driver (else every worker prints
    torch's and torchao's import warnings)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if quiet:
        from edgepack.logs import quiet_libraries

        quiet_libraries()


def open_executor(executor: Executor, workers: int, address: str | None):
    if executor == "ray":
        from edgepack.matrix.ray_executor import RayExecutor

        return RayExecutor(address)
    return LocalExecutor(workers)


# --- the driver --------------------------------------------------------------------------------------------


def run_matrix(
    matrix: Matrix,
    *,
    shard: tuple[int, int] | None = None,
    only: list[str] | None = None,
    workers: int | None = None,
    runner: Runner = export_cell,
    progress: Callable[[str], None] = lambda message: None,
    executor: Executor = "local",
    address: str | None = None,
    cache: str | None = None,
) -> dict:
    """Run the selected cells that no store holds yet; return (and write) the summary.

    ``executor``: ``"local"`` (``workers`` processes on this machine) or ``"ray"`` (one Ray task per cell, its
    ``memory`` and ``num_cpus`` from edgepack's estimate; ``address`` of a running cluster, else a local one).
    ``cache``: a shared path or fsspec URL every node reaches; cells are published there and copied into OUT.
    """
    ex = open_executor(executor, workers or matrix.config.workers, address)  # without Ray: fails here, at once
    cells = select(matrix.cells(), shard, only)
    models = checkpoints(cells)
    keys = cell_keys(matrix, cells, models)
    local, shared = FolderStore(matrix.out), SharedStore(cache) if cache else None
    rows: dict[str, dict] = {}
    pending = []
    for cell in cells:
        row = _from_cache(local, shared, keys[cell.id])
        if row:
            rows[cell.id] = {**row, "status": "cached", "seconds": 0.0}
        else:
            pending.append(cell)
    progress(f"matrix: {len(cells)} cells, {len(cells) - len(pending)} cached, {len(pending)} to run")
    memory = cell_memory(matrix, pending, models)
    with ex:
        jobs = [CellJob(c, keys[c.id], matrix.out, _options(matrix, c), memory[c.id], matrix.config.cpus_per_cell,
                        shared and shared.url, in_place=not (shared and ex.remote_nodes)) for c in pending]  # fmt: skip
        ex.check(jobs)  # refuses, before any cell runs, what no node can hold
        matrix.out.mkdir(parents=True, exist_ok=True)
        for result in ex.run(jobs, runner):
            rows[result.row["cell"]] = row = _collect(local, shared, result)
            progress(f"matrix: {row['cell']} {row['status']} ({row['seconds']:.1f}s)")
    summary = _summary(matrix, [rows[c.id] for c in cells])
    write_json(matrix.out / SUMMARY_FILE, summary)
    return summary


def _options(matrix: Matrix, cell: Cell) -> dict:
    return {"recipe": recipe_ref(matrix, cell.recipe), "max_seq_len": matrix.config.max_seq_len,
            "parity": matrix.config.parity}  # fmt: skip


def _from_cache(local: FolderStore, shared: SharedStore | None, key: str) -> dict | None:
    """A finished cell's row from OUT's own record, else from the shared cache (copied into OUT first)."""
    record = local.lookup(key)
    if record or shared is None:
        return record
    record = shared.lookup(key)
    if record is None:
        return None
    shared.fetch(record, local.out / record["out"])
    return local.publish(key, local.out / record["out"], _row(record))


def _collect(local: FolderStore, shared: SharedStore | None, result: CellResult) -> dict:
    """A worker's result, its files brought into OUT and recorded there when they were published elsewhere."""
    row = result.row
    if shared is not None and result.record is not None:
        if not result.in_place:
            shared.fetch(result.record, local.out / row["out"])
        local.publish(row["key"], local.out / row["out"], _row(result.record))
    return row


def _row(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("object", "files", "seconds")}


# --- summary -----------------------------------------------------------------------------------------------


def _summary(matrix: Matrix, rows: list[dict]) -> dict:
    devices = None if matrix.config.devices == "all" else matrix.config.devices
    for row in rows:
        row["fits"] = _fits(matrix.out / row["out"], devices) if row["status"] != "failed" else {}
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("exported", "cached", "parity-failed", "failed")
    }
    return {"edgepack_version": __version__, "out": str(matrix.out), "counts": counts, "cells": rows}


def _fits(folder: Path, devices: list[str] | None) -> dict[str, int]:
    """device -> the largest context the cell's artifact fits (0: cloud only)."""
    if not is_export_folder(folder):
        return {}
    from edgepack.plan import plan_export

    return {p.device: p.max_context for p in plan_export(folder, devices or "all", min_context=1)}


def format_summary(summary: dict) -> str:
    c = summary["counts"]
    lines = [f"{'cell':<44} {'status':<14} {'seconds':>8}  fits (device: max context)"]
    for row in summary["cells"]:
        fits = ", ".join(f"{d}: {n}" for d, n in row.get("fits", {}).items() if n) or "-"
        lines.append(f"{row['cell']:<44} {row['status']:<14} {row['seconds']:>8.1f}  {fits}")
        if row.get("error"):
            lines.append(f"{'':<44} {row['error'].splitlines()[0]}")
    lines.append(
        f"{len(summary['cells'])} cells: {c['exported']} exported, {c['cached']} cached, "
        f"{c['parity-failed']} failed parity, {c['failed']} failed. Summary: {Path(summary['out']) / SUMMARY_FILE}"
    )
    return "\n".join(lines)
