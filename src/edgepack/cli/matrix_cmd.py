"""``edgepack matrix CONFIG.yaml``: run a models x recipes x targets export matrix with a content-addressed cache."""

from __future__ import annotations

import click

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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@handle_errors
def matrix(config, workers, shard, cells, emit_ci, as_json, quiet):
    """Export every cell of CONFIG that the cache does not already hold, then print one summary.

    Exit 1 if a cell failed (export error or parity), else 0.
    """
    from edgepack import matrix as mx

    m = mx.load_matrix(config)
    selected_shard = mx.parse_shard(shard) if shard else None
    if emit_ci:
        print_json(mx.github_matrix(m, mx.select(m.cells(), selected_shard, list(cells))))
        return
    quiet_libraries()
    with Progress(quiet) as progress:
        summary = mx.run_matrix(m, shard=selected_shard, only=list(cells), workers=workers, progress=progress)
    if as_json:
        print_json(summary)
    else:
        click.echo(mx.format_summary(summary))
    if summary["counts"]["failed"] or summary["counts"]["parity-failed"]:
        raise SystemExit(1)
