"""``edgepack inspect MODEL``: what the checkpoint is and what edgepack can make of it."""

from __future__ import annotations

import click

from edgepack.cli._common import handle_errors, print_json


@click.command()
@click.argument("model")
@click.option("--allow-pickle", is_flag=True)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def inspect(model, allow_pickle, trust_remote_code, as_json):
    """Architecture, parameters, dtype, context, sliding window, tokenizer, and the recipes and targets that apply."""
    from edgepack.inspect import describe

    info = describe(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if as_json:
        print_json(info)
        return
    from edgepack.inspect import rope_summary, window_layout

    for key in ("model_id", "architecture", "model_type", "num_parameters", "dtype", "source_precision",
                "context_length", "sliding_window", "weights_digest"):
        click.echo(f"{key:<16} {info[key]}")
    click.echo(f"{'rope':<16} {rope_summary(info['rope'])}")
    windows = window_layout(info["layer_types"], info["sliding_window"])
    if windows:
        click.echo(f"{'windows':<16} {windows}")
    for part, why in info["not_exported"].items():
        click.echo(f"{'not exported':<16} {part} ({why})")
    tok = info["tokenizer"]
    click.echo(f"{'tokenizer':<16} {tok['source']}: {', '.join(tok['files']) or 'none'}; chat template: "
               f"{'yes' if tok['chat_template'] else 'no'}; bos {tok['bos_id']} eos {tok['eos_ids']}")
    click.echo("targets x recipes (rules a backend cannot honour are listed):")
    for target, per_recipe in info["targets"].items():
        for recipe, notes in per_recipe.items():
            click.echo(f"  {target:<11} {recipe:<14} {'ok' if not notes else '; '.join(notes)}")
