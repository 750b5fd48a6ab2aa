"""``edgepack recipes [NAME]``: list the shipped recipes, or show one in full."""

from __future__ import annotations

import click

from edgepack.cli._common import handle_errors, print_json


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def recipes(name, as_json):
    """List the shipped quantization recipes, or show NAME (a recipe name or path)."""
    import yaml

    from edgepack.recipes import available, load_recipe

    if name:
        recipe = load_recipe(name)
        data = recipe.model_dump(mode="json")
        click.echo(print_json(data) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip())
        return
    loaded = [load_recipe(n) for n in available()]
    if as_json:
        print_json([{"name": r.name, "description": r.description, "method": r.method.describe()} for r in loaded])
        return
    for r in loaded:
        linear = r.rules[-1].weights.describe() if r.rules else r.dtype  # the catch-all rule comes last
        if len(r.rules) > 1:
            linear += f" (+{len(r.rules) - 1} rules)"
        emb = r.embedding.describe() if r.embedding else r.dtype
        codes = r.method.describe() if r.quantizes else "-"
        click.echo(f"{r.name:<18} linear: {linear:<36} embedding: {emb:<22} codes: {codes}")
