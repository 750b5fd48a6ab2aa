"""Stage 4, verify: the parity harness.

One harness (``edgepack.parity.harness``) drives one ``Runner`` per runtime through a common interface;
each backend's folder holds its runner (``edgepack.backends``). A runner holds one loaded
artifact and its KV cache; ``forward`` feeds tokens at the current position (a prefill chunk or a single
decode token) and returns their logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from collections.abc import Sequence

import numpy as np

from edgepack.errors import EdgepackError, ParityError


class Runner(Protocol):
    max_seq_len: int

    def reset(self) -> None:
        """Empty the KV cache; the next ``forward`` starts at position 0."""

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens`` after those already seen; return float32 logits of shape [len(tokens), vocab]."""


def open_runner(export_root: Path, artifact, **options) -> Runner:
    """The runner for ``artifact`` (an ``edgepack.backends.Artifact``) of the export folder ``export_root``:
    its backend's (``edgepack/backends/<target>/runner.py``)."""
    from edgepack.backends import get_backend

    try:
        backend = get_backend(artifact.target)
    except EdgepackError as exc:
        raise ParityError(str(exc)) from None
    return backend.open_runner(export_root, artifact, **options)
