"""Cells as Ray tasks: ``edgepack matrix CONFIG --executor ray [--address ADDR]``.

Each cell is one task running ``run_cell``, the local executor's cell runner. Its ``memory`` resource is edgepack's
estimate of the cell's peak RSS (the target's ``ExportCost``), so Ray never puts two cells on a node whose memory
they would not fit together, and its ``num_cpus`` the config's ``cpus_per_cell`` (Ray sets the task's
``OMP_NUM_THREADS`` to match). A cell that no node can hold is refused before any cell runs: Ray would otherwise
leave it pending for ever. A task whose worker or node dies is retried by Ray (``RETRIES``); the dead attempt
published nothing, so the retry starts clean.

Ray is an optional extra (``pip install 'edgepack[ray]'``), imported only here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from edgepack.errors import ConfigError
from edgepack.matrix.cell import CellJob, CellResult, Runner, failed_row, run_cell

RETRIES = 2  # attempts after the first when a worker or node dies mid-cell
OBJECT_STORE = 128 << 20  # a cluster edgepack starts moves only summary rows through Ray's object store
GB = 1e9


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray", ["Ray is not installed: pip install 'edgepack[ray]'"]) from None
    return ray


class RayExecutor:
    remote_nodes = True  # a task may run on another machine: with a shared cache it exports into a local folder

    def __init__(self, address: str | None = None):
        self.address = address
        self.ray = import_ray()
        self.started = False

    def __enter__(self) -> RayExecutor:
        return self

    def _connect(self) -> None:
        """Join the cluster (or start one) when there is a cell to run: a fully cached matrix needs no Ray."""
        if not self.ray.is_initialized():
            self.ray.init(**self._init_options())
            self.started = True

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()

    def _init_options(self) -> dict:
        options = {"address": self.address, "include_dashboard": False, "log_to_driver": False,
                   "logging_level": "WARNING"}  # fmt: skip
        if self.address is None and not os.environ.get("RAY_ADDRESS"):  # edgepack starts the cluster
            options["object_store_memory"] = OBJECT_STORE
        return options

    def nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def check(self, jobs: list[CellJob]) -> None:
        """Refuse, before anything runs, the cells no node can hold and a multi-node cluster without a cache."""
        if not jobs:
            return
        self._connect()
        nodes = self.nodes()
        largest = max((n["Resources"].get("memory", 0) for n in nodes), default=0)
        problems = [
            f"cell {j.cell.id} needs about {j.memory / GB:.1f} GB (edgepack's estimate for {j.cell.target}), more "
            f"than the largest Ray node offers ({largest / GB:.1f} GB): add a larger node or leave the cell out"
            for j in jobs
            if j.memory > largest
        ]
        cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        problems += [f"cell {j.cell.id} asks {j.cpus} CPUs (cpus_per_cell), more than any Ray node has ({cpus:g})"
                     for j in jobs if j.cpus > cpus]  # fmt: skip
        if len(nodes) > 1 and jobs[0].cache is None:
            problems.append(f"the Ray cluster has {len(nodes)} nodes: give --cache a path or URL every node reaches")
        if problems:
            raise ConfigError("--executor ray", problems)

    def run(self, jobs: list[CellJob], runner: Runner) -> Iterator[CellResult]:
        if not jobs:
            return
        self._connect()
        ray = self.ray
        task = ray.remote(run_cell)
        refs, started = {}, time.perf_counter()
        for job in jobs:
            ref = task.options(
                memory=job.memory, num_cpus=job.cpus, max_retries=RETRIES, retry_exceptions=False,
                name=f"edgepack {job.cell.id}",
            ).remote(job, runner)  # fmt: skip
            refs[ref] = job
        try:
            while refs:
                (ref,), _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker or node died past RETRIES, or Ray's OOM killer
                    yield failed_row(job, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                                     time.perf_counter() - started)  # fmt: skip
        finally:
            for ref in refs:  # the driver stops early (Ctrl-C, an error): no orphan exports on the cluster
                ray.cancel(ref, force=True)
