"""``edgepack validate FILE...``: validate recipes, device profiles and other configs; report every error."""

from __future__ import annotations

from pathlib import Path

import click

from edgepack.errors import ConfigError


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--kind", type=click.Choice(["auto", "recipe", "device", "fallback", "matrix"]), default="auto",
              show_default=True, help="What the files are. auto: by folder (recipes/, devices/) or content.")
def validate(files, kind):
    """Validate each FILE; print OK or every problem found. Exit 2 if any file is invalid."""
    from edgepack.validation import validate_file

    bad = 0
    for name in files:
        try:
            what = validate_file(Path(name), kind)
            click.echo(f"ok    {name} ({what})")
        except ConfigError as exc:
            bad += 1
            click.echo(f"error: {exc}", err=True)
    if bad:
        raise SystemExit(2)
