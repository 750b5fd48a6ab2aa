"""The export matrix: models x recipes x targets, each cell one ``edgepack.pipeline.export``, checked against
the device profiles.

Stages: load the config (typed, validated) -> expand the cells (sorted, so shards are stable) -> key each cell
-> run the cells not in the cache (N worker processes) -> fit each cell's artifact to the devices -> summary.

Cache: a cell's key is the sha256 of its weights digest, recipe digest, target, max_seq_len, parity flag, and
the versions of edgepack and of the target's backend packages. A cell is done when ``OUT/cache/<key>.json``
exists and names a complete export folder. The worker writes that record only after the pipeline has renamed
its finished export into place (the pipeline writes atomically), so a matrix killed half-way reruns exactly
the cells that had not finished, and an unchanged cell is never exported twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepack.export_record import is_export_folder
from edgepack import __version__
from edgepack.backends import get_backend
from edgepack.config import Strict, load
from edgepack.errors import ConfigError, EdgepackError, ParityError

CACHE_DIR = "cache"
CELLS_DIR = "cells"
SUMMARY_FILE = "matrix.json"


class ModelEntry(Strict):
    path: str = Field(
        description="a model folder, .gguf file or hub id; relative paths from the config's folder"
    )
    name: str | None = Field(None, description="the cell name; default: the folder or file name")


class MatrixConfig(Strict):
    models: list[str | ModelEntry] = Field(min_length=1)
    recipes: list[str] = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    devices: list[str] | Literal["all"] = "all"
    out: str = Field("matrix-out", description="relative paths from the config's folder")
    workers: int = Field(1, ge=1)
    max_seq_len: int | None = Field(None, ge=2)
    parity: bool = True


@dataclass(frozen=True)
class Cell:
    model: str  # the model's name in the matrix
    source: str  # what pipeline.export resolves
    recipe: str
    target: str

    @property
    def id(self) -> str:
        return f"{self.model}/{self.recipe}/{self.target}"


@dataclass
class Matrix:
    config: MatrixConfig
    base: Path  # the config file's folder
    source: str = "<matrix>"

    @property
    def out(self) -> Path:
        return _from(self.base, self.config.out)

    def cells(self) -> list[Cell]:
        models = [m if isinstance(m, ModelEntry) else ModelEntry(path=m) for m in self.config.models]
        return sorted(
            (Cell(m.name or _model_name(m.path), _source(self.base, m.path), r, t)
             for m in models for r in self.config.recipes for t in self.config.targets),
            key=lambda c: c.id,
        )  # fmt: skip


def load_matrix(path: str | Path) -> Matrix:
    """Load and check a matrix config: unknown keys, recipes, targets, devices and duplicate names, all at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    matrix = Matrix(load(MatrixConfig, path), path.resolve().parent, str(path))
    problems = _problems(matrix)
    if problems:
        raise ConfigError(str(path), problems)
    return matrix


def _problems(matrix: Matrix) -> list[str]:
    from edgepack import devices, recipes
    from edgepack.backends import target_names

    cfg, problems = matrix.config, []
    known = recipes.available()
    problems += [f"recipes: unknown recipe {r!r}; shipped: {', '.join(known)}"
                 for r in cfg.recipes if r not in known and not Path(r).suffix]  # fmt: skip
    problems += [f"recipes: recipe file {r} not found" for r in cfg.recipes
                 if Path(r).suffix and not _from(matrix.base, r).is_file()]  # fmt: skip
    targets = target_names()
    problems += [
        f"targets: unknown target {t!r}; supported: {', '.join(targets)}"
        for t in cfg.targets
        if t not in targets
    ]
    if cfg.devices != "all":
        shipped = devices.available()
        problems += [f"devices: unknown device {d!r}; shipped: {', '.join(shipped)}"
                     for d in cfg.devices if d not in shipped and not Path(d).suffix]  # fmt: skip
    names = [
        m.name or _model_name(m.path) if isinstance(m, ModelEntry) else _model_name(m) for m in cfg.models
    ]
    dupes = sorted({n for n in names if names.count(n) > 1})
    problems += [f"models: two models are named {n!r}; give them distinct 'name's" for n in dupes]
    return problems


def _from(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _source(base: Path, path: str) -> str:
    local = _from(base, path)
    return str(local) if local.exists() or Path(path).suffix == ".gguf" else path  # else a hub id


def _model_name(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.stem if p.suffix == ".gguf" else p.name


# --- keys --------------------------------------------------------------------------------------------------


def backend_versions(target: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in get_backend(target).packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def cell_keys(matrix: Matrix, cells: list[Cell]) -> dict[str, str]:
    """cell id -> content key. Resolves each model once (no weights loaded; the weight files are hashed)."""
    from edgepack.checkpoint import resolve
    from edgepack.recipes import load_recipe

    digests = {c.source: resolve(c.source).weights_digest for c in cells}
    recipe_digests = {r: load_recipe(_recipe_ref(matrix, r)).digest() for r in {c.recipe for c in cells}}
    keys = {}
    for c in cells:
        parts = {
            "weights": digests[c.source], "recipe": recipe_digests[c.recipe], "target": c.target,
            "max_seq_len": matrix.config.max_seq_len, "parity": matrix.config.parity,
            "edgepack": __version__, "backend": backend_versions(c.target),
        }  # fmt: skip
        keys[c.id] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return keys


def _recipe_ref(matrix: Matrix, recipe: str) -> str:
    return str(_from(matrix.base, recipe)) if Path(recipe).suffix else recipe


# --- selection: shards and CI ------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1-based) -> (i, n)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError("--shard", [f"expected i/n such as 1/4, got {text!r}"]) from None
    if not 1 <= i <= n:
        raise ConfigError("--shard", [f"shard {i} of {n} does not exist; use 1/{n} .. {n}/{n}"])
    return i, n


def select(
    cells: list[Cell], shard: tuple[int, int] | None = None, only: list[str] | None = None
) -> list[Cell]:
    if only:
        ids = {c.id for c in cells}
        unknown = [o for o in only if o not in ids]
        if unknown:
            raise ConfigError("--cell", [f"no cell {o!r}; cells: {', '.join(sorted(ids))}" for o in unknown])
        cells = [c for c in cells if c.id in only]
    if shard:
        i, n = shard
        cells = cells[i - 1 :: n]
    return cells


def github_matrix(matrix: Matrix, cells: list[Cell]) -> dict:
    """A ``strategy.matrix`` for GitHub Actions: one job per cell, with its cache key for ``actions/cache``."""
    keys = cell_keys(matrix, cells)
    return {
        "include": [
            {
                "cell": c.id,
                "model": c.model,
                "recipe": c.recipe,
                "target": c.target,
                "key": f"edgepack-{keys[c.id]}",
            }
            for c in cells
        ]
    }


# --- running -----------------------------------------------------------------------------------------------

Runner = Callable[[Cell, Path, dict], dict]


def export_cell(cell: Cell, out: Path, options: dict) -> dict:
    """The default runner: one pipeline export of one model, recipe and target into ``out``."""
    from edgepack.pipeline import export

    out.parent.mkdir(parents=True, exist_ok=True)
    result = export(cell.source, recipe=options["recipe"], targets=[cell.target], out=out, force=True,
                    max_seq_len=options["max_seq_len"], parity=options["parity"])  # fmt: skip
    return result.summary()


def run_matrix(
    matrix: Matrix,
    *,
    shard: tuple[int, int] | None = None,
    only: list[str] | None = None,
    workers: int | None = None,
    runner: Runner = export_cell,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Run the selected cells not already in the cache; return (and write) the summary."""
    cells = select(matrix.cells(), shard, only)
    keys = cell_keys(matrix, cells)
    out = matrix.out
    (out / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    pending = []
    for cell in cells:
        record = _cached(out, keys[cell.id])
        if record:
            rows[cell.id] = {**record, "status": "cached", "seconds": 0.0}
        else:
            pending.append(cell)
    progress(f"matrix: {len(cells)} cells, {len(cells) - len(pending)} cached, {len(pending)} to run")
    jobs = [(c, keys[c.id], out, _options(matrix, c), runner) for c in pending]
    workers = min(workers or matrix.config.workers, len(jobs)) or 1
    for row in _execute(jobs, workers):
        rows[row["cell"]] = row
        progress(f"matrix: {row['cell']} {row['status']} ({row['seconds']:.1f}s)")
    summary = _summary(matrix, [rows[c.id] for c in cells])
    _write_json(out / SUMMARY_FILE, summary)
    return summary


def _options(matrix: Matrix, cell: Cell) -> dict:
    return {"recipe": _recipe_ref(matrix, cell.recipe), "max_seq_len": matrix.config.max_seq_len,
            "parity": matrix.config.parity}  # fmt: skip


def _execute(jobs: list[tuple], workers: int):
    if workers <= 1:
        for job in jobs:
            yield run_cell(*job)
        return
    import multiprocessing

    # spawn: torch and the backends do not survive fork reliably.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(run_cell, *job) for job in jobs]):
            yield future.result()


def run_cell(cell: Cell, key: str, out: Path, options: dict, runner: Runner) -> dict:
    """Run one cell; on a complete export, write its cache record (the only mark of a finished cell)."""
    folder = out / CELLS_DIR / cell.model / cell.recipe / cell.target
    start = time.perf_counter()
    row = {"cell": cell.id, "key": key, "out": str(folder.relative_to(out))}
    try:
        result = runner(cell, folder, options)
        row.update(status="exported", result=result)
    except ParityError as exc:  # the export is complete and kept; parity is deterministic for a key
        row.update(status="parity-failed", error=str(exc))
    except EdgepackError as exc:
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one crashing backend must not lose the other cells
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - start, 2)
    if row["status"] != "failed":
        _write_json(out / CACHE_DIR / f"{key}.json", {k: v for k, v in row.items() if k != "seconds"})
    return row


def _cached(out: Path, key: str) -> dict | None:
    path = out / CACHE_DIR / f"{key}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if (out / record["out"]).is_dir() else None  # output deleted: run it again


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


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
