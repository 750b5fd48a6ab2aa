"""The MLX runner: the exported folder loaded by mlx-lm (``mlx_lm.utils.load_model``), fed through its own KV
cache (``make_prompt_cache``) as an app would, logits read back as float32."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ArtifactError, ParityError


class MLXRunner:
    def __init__(self, export_root: Path, artifact, **_options):
        try:
            from mlx_lm.utils import load_model
        except ImportError:
            raise ArtifactError(
                "The mlx target runs in MLX: pip install 'mlx[cpu]' mlx-lm (Linux) or mlx mlx-lm (macOS)."
            ) from None
        folder = (Path(export_root) / artifact.path).parent
        try:
            self.model, _ = load_model(folder)
        except (ValueError, KeyError, OSError) as exc:
            raise ArtifactError(f"mlx-lm cannot load {folder}: {exc}") from None
        self.max_seq_len = artifact.max_seq_len
        self.reset()

    def reset(self) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        self.cache = make_prompt_cache(self.model)
        self.position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        import mlx.core as mx

        n = len(tokens)
        if not 0 < n or self.position + n > self.max_seq_len:
            raise ParityError(f"MLX runner: {self.position} + {n} tokens do not fit the export's "
                              f"{self.max_seq_len}-token context.")  # fmt: skip
        logits = self.model(mx.array([list(tokens)], dtype=mx.int32), cache=self.cache)
        out = np.array(logits[0].astype(mx.float32))
        self.position += n
        return out
