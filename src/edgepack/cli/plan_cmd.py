"""``edgepack plan MODEL``: which target, recipe and context fit each device profile."""

from __future__ import annotations

import click

from edgepack.export_record import is_export_folder
from edgepack.cli._common import COMMA_LIST, handle_errors, print_json


@click.command()
@click.argument("model")
@click.option(
    "--devices", default="all", show_default=True, help="'all', or comma-separated profile names/paths."
)
@click.option(
    "--recipes",
    type=COMMA_LIST,
    help="Comma-separated recipes, preferred first [default: int8-weight,int4-block32,int4-block128].",
)
@click.option("--targets", type=COMMA_LIST, help="Comma-separated targets to consider [default: every target].")
@click.option(
    "--min-context",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="A candidate must fit at least this many tokens (or the model's whole context).",
)
@click.option(
    "--num-parameters",
    type=click.IntRange(min=1),
    help="Parameter count, when MODEL is a bare config.json (no weights to count).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plans as JSON.")
@handle_errors
def plan(model, devices, recipes, targets, min_context, num_parameters, as_json):
    """Plan MODEL (a model folder, .gguf, hub id, an export folder, or a config.json) for each device.

    Per device: the best recipe and target that fit, and the largest context that fits; or cloud-only with the
    reason. An export folder is planned from its artifacts' real sizes.
    """
    from pathlib import Path

    from edgepack import plan as planning

    if is_export_folder(Path(model)):
        plans = planning.plan_export(model, devices, min_context=min_context)
    else:
        plans = planning.plan(
            model,
            devices,
            recipes,
            targets=targets,
            num_parameters=num_parameters,
            min_context=min_context,
        )
    if as_json:
        print_json([p.as_dict() for p in plans])
        return
    for p in plans:
        where = "cloud only" if p.cloud_only else f"{p.target} / {p.recipe}, context {p.max_context}"
        click.echo(f"{p.device:<22} {where}")
        click.echo(f"{'':<22} {p.reason}")
