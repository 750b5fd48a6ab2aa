"""Hand freed weight-sized buffers back to the OS, so that peak memory is what the code holds, not what glibc keeps.

glibc serves a request above its mmap threshold with its own mapping (unmapped on free) and smaller ones from its
heaps, which rarely shrink. The threshold starts at 128 KiB but rises to the size of each mapped block freed, up to
32 MiB: after the first few weight matrices every later one comes from the heaps, and freed temporaries of many
sizes pile up there. Measured on a 12-layer, 290 MB bf16 Llama: tracing its ONNX graph peaked 640 MB above the
loaded model with the dynamic threshold and 220 MB with a fixed 1 MiB one; the whole ONNX stage went from 1.6-2.1
to under 1.2 bytes per checkpoint byte (tests/test_memory.py). A fixed threshold costs one mmap per large buffer,
nothing next to the work done with a weight matrix.

Called where weights are first loaded (``Checkpoint.load_model``, ``weights.load_layer_streamed``). A process whose
environment sets ``MALLOC_MMAP_THRESHOLD_`` keeps its own setting; other C libraries (macOS) are left alone.
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_done = False


def return_large_frees() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` (once per process); True when it is in force."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # musl and other C libraries: no mallopt
        return False
    return _done
