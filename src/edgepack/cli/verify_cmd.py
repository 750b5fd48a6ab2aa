"""``edgepack verify BUNDLE``: schema, digests, parity, no secrets. Exit 1 with every problem found."""

from __future__ import annotations

import click

from edgepack.cli._common import handle_errors, print_json


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--allow-no-parity", is_flag=True, help="Accept artifacts exported with --no-parity.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(bundle, allow_no_parity, as_json):
    """Verify BUNDLE (a bundle folder, its .zip, or an export folder)."""
    from edgepack.verify import check_bundle

    report = check_bundle(bundle, allow_no_parity=allow_no_parity)
    if as_json:  # the report on stdout whatever it says; the exit code says whether it passed
        print_json({**vars(report), "ok": report.ok})
    report.raise_problems()
    if as_json:
        return
    click.echo(
        f"ok: {report.path} ({report.kind}): {report.files_checked} files, {report.bytes_checked} bytes, "
        f"artifacts {', '.join(report.artifacts)}; digests match, parity passed, no secrets"
    )
