"""``edgepack route``: the reference router. Decide on-device or cloud for one request, and call the cloud.

Exit 0 when the request is served (on device, or the cloud answered), 1 when it is refused or the cloud
call failed; the JSON printed says which and why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgepack.cli._common import handle_errors, print_json


@click.command()
@click.option(
    "--manifest",
    "manifest_path",
    required=True,
    type=click.Path(exists=True),
    help="manifest.json (or its folder).",
)
@click.option("--device-state", "state_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--request", "request_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Decide only; do not call the cloud.")
@click.option(
    "--token-env",
    default="HF_TOKEN",
    show_default=True,
    help="Environment variable holding the user's OAuth token (auth user_oauth); never stored.",
)
@handle_errors
def route(manifest_path, state_path, request_path, dry_run, token_env):
    """Route the chat request REQUEST for the device in DEVICE-STATE per the manifest's fallback section."""
    from edgepack.config import read_data
    from edgepack.manifest import read_manifest
    from edgepack.router import route as decide_route

    manifest = read_manifest(manifest_path)
    request = read_data(Path(request_path))
    decision = decide_route(manifest, read_data(Path(state_path)), request)
    out = {"decision": decision.to_dict()}
    if decision.route == "cloud" and not dry_run:
        from edgepack.router.client import complete

        stream = manifest["fallback"]["stream"] if request.get("stream") is None else request["stream"]
        echo = (
            (lambda d: click.echo(d, nl=False, err=True)) if stream else None
        )  # tokens as they come, on stderr
        result = complete(
            manifest["fallback"], request, token=os.environ.get(token_env), stream=stream, on_delta=echo
        )
        out["cloud"] = result.to_dict()
    print_json(out)
    served = decision.route == "on_device" or (decision.route == "cloud" and (dry_run or out["cloud"]["ok"]))
    sys.exit(0 if served else 1)
