"""A matrix config: models x recipes x targets, loaded and checked at once; its cells, their content keys, memory
estimates, shards and the CI job matrix."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepack import __version__
from edgepack.backends import get_backend
from edgepack.config import Strict, load
from edgepack.errors import ConfigError

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
    workers: int = Field(1, ge=1, description="local worker processes (the local executor)")
    cpus_per_cell: int = Field(1, ge=1, description="CPUs each cell asks of Ray (the ray executor)")
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
    """The cell's model name (a folder name under OUT/cells): ``builtin:smollm2`` -> ``smollm2``."""
    p = Path(path.removeprefix("builtin:").rstrip("/"))
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


def checkpoints(cells: list[Cell]) -> dict[str, Any]:
    """source -> its resolved ``Checkpoint``, each model once (no weights loaded)."""
    from edgepack.checkpoint import resolve

    return {source: resolve(source) for source in dict.fromkeys(c.source for c in cells)}


def cell_keys(matrix: Matrix, cells: list[Cell], models: dict[str, Any] | None = None) -> dict[str, str]:
    """cell id -> content key. The weight files are hashed, once per model."""
    from edgepack.recipes import load_recipe

    models = models or checkpoints(cells)
    recipe_digests = {r: load_recipe(recipe_ref(matrix, r)).digest() for r in {c.recipe for c in cells}}
    keys = {}
    for c in cells:
        parts = {
            "weights": models[c.source].weights_digest, "recipe": recipe_digests[c.recipe], "target": c.target,
            "max_seq_len": matrix.config.max_seq_len, "parity": matrix.config.parity,
            "edgepack": __version__, "backend": backend_versions(c.target),
        }  # fmt: skip
        keys[c.id] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return keys


def cell_memory(matrix: Matrix, cells: list[Cell], models: dict[str, Any]) -> dict[str, int]:
    """cell id -> edgepack's estimate of the cell's peak RSS in bytes (the target's ``ExportCost``)."""
    return {
        c.id: get_backend(c.target).export_cost.peak(2 * models[c.source].num_parameters, matrix.config.parity)
        for c in cells
    }


def recipe_ref(matrix: Matrix, recipe: str) -> str:
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
