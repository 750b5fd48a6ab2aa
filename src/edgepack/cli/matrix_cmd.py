"""``edgepack matrix CONFIG.yaml``: run a models x recipes x targets export matrix with a content-addressed cache."""

from __future__ import annotations

import click

from edgepack.errors import ConfigError
from edgepack.logs import quiet_libraries
from edgepack.cli._common import Progress, handle_errors, print_json


@click.command()
@click.argument("config", type=click.Path())
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes [default: the config's workers]."
)
@click.option("--shard", metavar="I/N", help="Run only shard I of N (1-based), e.g. 2/4.")
@click.option(
    "--cell",
    "cells",
    multiple=True,
    metavar="ID",
    help="Run only this cell (model/recipe/target); repeatable.",
)
@click.option(
    "--emit-ci", type=click.Choice(["github"]), help="Print a CI job matrix (JSON) instead of running."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where cells run: local worker processes, or one Ray task per cell (pip install 'edgepack[ray]').",
)
@click.option("--address", metavar="ADDR", help="A running Ray cluster (ray://host:10001, host:6379) [default: start one here].")
@click.option(
    "--cache",
    metavar="PATH|URL",
    help="A cell cache every node reaches (a shared path, file:///..., s3://...): cells are published there, then copied into the config's out.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@handle_errors
def matrix(config, workers, shard, cells, emit_ci, executor, address, cache, as_json, quiet):
    """Export every cell of CONFIG that the cache does not already hold, then print one summary.

    Each cell needs edgepack's estimate of its peak memory; on Ray that is the task's memory resource, and a cell
    no node can hold is refused before any cell runs. Exit 1 if a cell failed (export error or parity), else 0.
    """
    from edgepack import matrix as mx

    if address and executor != "ray":
        raise ConfigError("--address", ["names a Ray cluster; add --executor ray"])
    m = mx.load_matrix(config)
    selected_shard = mx.parse_shard(shard) if shard else None
    if emit_ci:
        print_json(mx.github_matrix(m, mx.select(m.cells(), selected_shard, list(cells))))
        return
    quiet_libraries()
    with Progress(quiet) as progress:
        summary = mx.run_matrix(m, shard=selected_shard, only=list(cells), workers=workers, progress=progress,
                                 executor=executor, address=address, cache=cache)
    if as_json:
        print_json(summary)
    else:
        click.echo(mx.format_summary(summary))
    if summary["counts"]["failed"] or summary["counts"]["parity-failed"]:
        raise SystemExit(1)
