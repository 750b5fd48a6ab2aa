"""``edgepack schema NAME``: print a shipped JSON Schema (manifest, fallback, conformance)."""

from __future__ import annotations

import click

from edgepack.cli._common import handle_errors, print_json


def _names() -> list[str]:
    from edgepack.manifest import SCHEMAS_DIR

    return sorted(
        {p.name.removesuffix(".schema.json") for p in SCHEMAS_DIR.glob("*.schema.json")} | {"fallback"}
    )


@click.command()
@click.argument("name", type=click.Choice(_names()), default="manifest")
@handle_errors
def schema(name: str) -> None:
    """Print the JSON Schema NAME (default: manifest). The fallback schema describes the fallback YAML."""
    if name == "fallback":
        from edgepack.fallback import Fallback

        return print_json(Fallback.model_json_schema())
    from edgepack.manifest import schema as load_schema

    print_json(load_schema(name))
