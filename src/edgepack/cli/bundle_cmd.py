"""``edgepack bundle DIR``: per-platform app bundles, each a folder and a zip, byte-identical across runs."""

from __future__ import annotations

import click

from edgepack.cli._common import handle_errors, print_json


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--platform",
    type=click.Choice(["ios", "android", "all"]),
    default="all",
    show_default=True,
    help="ios: Core ML package; android: .pte and ONNX. Both get the tokenizer and a manifest.",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder to write (created atomically)."
)
@click.option("--runtime", type=click.Choice(["coreml", "executorch", "onnxruntime"]), default=None,
              help="Only this runtime's artifacts (e.g. an Android app that ships ExecuTorch alone).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option(
    "--allow-failed-parity", is_flag=True, help="Bundle artifacts that failed parity (verify still fails)."
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@handle_errors
def bundle(export_dir, platform, out, runtime, force, allow_failed_parity, as_json):
    """Write OUT/<platform>/ and OUT/<platform>.zip from the export folder EXPORT_DIR."""
    from edgepack.bundle import write_bundle

    written = write_bundle(export_dir, out, platform, force=force, allow_failed_parity=allow_failed_parity,
                           runtime=runtime, say=lambda message: click.echo(message, err=True))  # fmt: skip
    if as_json:
        return print_json([{**vars(b), "folder": str(b.folder), "zip": str(b.zip)} for b in written])
    for b in written:
        click.echo(
            f"{b.platform}: {b.folder} ({b.files} files, {b.bytes} bytes: {', '.join(b.artifacts)}) + {b.zip}"
        )
