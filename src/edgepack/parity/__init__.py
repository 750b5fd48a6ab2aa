"""Stage 4, verify: the parity harness.

One harness (``edgepack.parity.harness``) drives one ``Runner`` per runtime through a common interface;
each backend registers its runner in ``RUNNERS`` under the artifact's target name. A runner holds one loaded
artifact and its KV cache; ``forward`` feeds tokens at the current position (a prefill chunk or a single
decode token) and returns their logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from collections.abc import Callable, Sequence

import numpy as np

from edgepack.errors import ParityError
from edgepack.registry import Registry


class Runner(Protocol):
    max_seq_len: int

    def reset(self) -> None:
        """Empty the KV cache; the next ``forward`` starts at position 0."""

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens`` after those already seen; return float32 logits of shape [len(tokens), vocab]."""


# factory(export_root: Path, artifact: edgepack.exporters.Artifact, **options) -> Runner
RUNNERS: Registry[Callable[..., Runner]] = Registry("parity runner", ParityError)


def open_runner(export_root: Path, artifact, **options) -> Runner:
    """The runner for ``artifact`` (an ``edgepack.exporters.Artifact``) of the export folder ``export_root``."""
    import importlib

    # Each backend's runner lives in edgepack/parity/runners/<target>.py and registers itself on import.
    try:
        importlib.import_module(f"edgepack.parity.runners.{artifact.target}")
    except ModuleNotFoundError as exc:
        if exc.name != f"edgepack.parity.runners.{artifact.target}":
            raise
    return RUNNERS.get(artifact.target)(export_root, artifact, **options)
