"""What every command shares: error handling at the CLI boundary and output helpers."""

from __future__ import annotations

import functools
import json
import sys

import click

from edgepack.errors import EdgepackError


def handle_errors(fn):
    """Turn an EdgepackError into ``error: <message>`` on stderr and its exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgepackError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def console():
    """(a rich Console on stderr, plain): ``NO_COLOR`` (any value) and ``TERM=dumb`` mean no escape codes at all
    -- no styles such as dim, no cursor movement -- where rich alone would drop only the colours."""
    import os

    from rich.console import Console

    plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
    return Console(stderr=True, highlight=False, color_system=None if plain else "auto"), plain


class Progress:
    """Stage messages on stderr with elapsed time and a spinner while a stage runs; silent when quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._status = None
        if not quiet:
            import time

            self._console, self._plain = console()
            self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        import time

        from rich.markup import escape

        elapsed = time.perf_counter() - self._start
        self._console.print(f"[dim]{elapsed:7.1f}s[/dim] {escape(message)}")
        if self._status is None and self._console.is_terminal and not self._plain:  # the spinner moves the cursor
            self._status = self._console.status("working...")
            self._status.start()
        if self._status is not None:
            self._status.update(message)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CommaList(click.ParamType):
    """``a,b`` -> ["a", "b"]: each name stripped, blanks kept, so the library can say that a blank name is a typo
    (never "all"). Every comma-list option takes this type."""

    name = "comma-list"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return [item.strip() for item in str(value).split(",")]


COMMA_LIST = CommaList()
