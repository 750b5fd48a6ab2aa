"""Output that native code writes straight to the process's stderr, below Python's reach.

ExecuTorch's runtime probes the CPU on the first program load and logs five ``cpuinfo_utils.cpp`` lines to file
descriptor 2 on every x86 host; no logger or warnings filter sees them. ``captured_stderr`` points descriptor 2 at
a temporary file for the duration of a native call and hands back what was written, so a caller can show it where
it explains a failure and drop it otherwise.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class Captured:
    text: str = ""


@contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Redirect file descriptor 2 to a temporary file inside the block; ``.text`` holds what was written."""
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
