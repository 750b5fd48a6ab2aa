"""Outputs that appear whole or not at all: each is built in a temporary sibling ``.NAME.tmp-PID`` and renamed into
place, so a failed or killed run never leaves a half-written NAME.

A run killed outright (SIGKILL, the machine's memory exhausted) cannot remove its own sibling; the next run for
the same NAME removes every sibling whose process is gone, and says so. Write errors the user can act on (no
permission, disk full, read-only file system) become one line naming the output.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError

# Errors that mean "this place cannot be written", not a bug: reported as one line.
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR}


def sibling(out: Path, kind: str = "tmp") -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}")


def stale_siblings(out: Path) -> list[Path]:
    """Temporary siblings of ``out`` left by processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)$")
    if not out.parent.is_dir():
        return []
    return sorted(
        p for p in out.parent.iterdir() if (m := pattern.match(p.name)) and not _alive(int(m.group(1)))
    )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def write_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` whole: readers (and concurrent writers) never see half a file."""
    tmp = sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def remove_stale(out: Path, say: Callable[[str], None] = lambda m: None) -> list[Path]:
    stale = stale_siblings(out)
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        names = ", ".join(p.name for p in stale)
        say(f"removed {len(stale)} temporary folder(s) left by killed runs beside {out.name}: {names}")
    return stale


def write_error(exc: OSError, out: Path, error: type[EdgepackError]) -> EdgepackError | None:
    """``exc`` as one line naming ``out``, when it is a write error the user can fix; None otherwise."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    why = os.strerror(exc.errno)
    fix = "Free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "Choose a writable place"
    return error(f"cannot write {out}: {why}. {fix} and run again.")


@contextmanager
def atomic_dir(out: Path, error: type[EdgepackError], say: Callable[[str], None] = lambda m: None) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; when the block succeeds it replaces ``out`` (an old ``out`` is
    removed only after the new one is in place), when it fails it is removed. Missing parent folders are created
    (as ``mkdir -p``), and removed again if the block fails and they are still empty."""
    remove_stale(out, say)
    tmp = sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    created = [p for p in reversed(out.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        old = sibling(out, "old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        _undo(tmp, created)
        raise (write_error(exc, out, error) or exc) from None
    except BaseException:
        _undo(tmp, created)
        raise


def _undo(tmp: Path, created: list[Path]) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(created):  # deepest first; one the block filled is not ours to remove
        try:
            folder.rmdir()
        except OSError:
            break
