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
    """Verify BUNDLE: a bundle folder, its .zip, an export folder, or the folder `edgepack bundle --out` wrote
    (every bundle in it)."""
    from edgepack.errors import VerifyError
    from edgepack.verify import check_bundles

    reports = check_bundles(bundle, allow_no_parity=allow_no_parity)
    if as_json:  # the report(s) on stdout whatever they say; the exit code says whether they passed
        shown = [{**vars(r), "ok": r.ok} for r in reports]
        print_json(shown[0] if len(shown) == 1 else {"ok": all(r.ok for r in reports), "bundles": shown})
    failed = [r for r in reports if not r.ok]
    if failed:
        raise VerifyError("\n".join(r.failure_message() for r in failed))
    if not as_json:
        for report in reports:
            click.echo(
                f"ok: {report.path} ({report.kind}): {report.files_checked} files, {report.bytes_checked} bytes, "
                f"artifacts {', '.join(report.artifacts)}; digests match, parity passed, no secrets"
            )

