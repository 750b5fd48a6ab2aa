"""`edgepack report DIR`: report.md and report.html for an export folder or a matrix output (see edgepack.report)."""

from __future__ import annotations

from pathlib import Path

import click

from edgepack.cli._common import handle_errors


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bench", "bench_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A bench JSON (edgepack bench --json). Default: FOLDER/bench.json where present.")  # fmt: skip
@handle_errors
def report(folder, bench_file):
    """Write report.md, report.html (plots embedded) and the plot PNGs into FOLDER.

    FOLDER is an export folder, or a matrix output (every export under FOLDER/cells/).
    """
    from edgepack.report import write_report

    for path in write_report(folder, bench_file=bench_file):
        click.echo(str(path))
