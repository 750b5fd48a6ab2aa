"""``edgepack devices [NAME]``: list the shipped device profiles, or show one."""

from __future__ import annotations

import click

from edgepack.cli._common import handle_errors, print_json


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def devices(name, as_json):
    """List the shipped device profiles, or show NAME (a profile name or path) in full."""
    import yaml

    from edgepack.devices import available, load_device

    if name:
        data = load_device(name).model_dump(mode="json")
        if as_json:
            print_json(data)
        else:
            click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        return
    loaded = [load_device(n) for n in available()]
    if as_json:
        print_json([d.model_dump(mode="json") for d in loaded])
        return
    for d in loaded:
        mem = d.memory
        extended = f" ({mem.extended.gb:g} extended)" if mem.extended else ""
        click.echo(
            f"{d.name:<22} {d.os.name} {d.os.min_version}+  RAM {mem.ram_gb:g} GiB, app limit {mem.app_limit_gb:g} GiB"
            f"{extended}  runtimes: {', '.join(d.runtimes)}"
        )
