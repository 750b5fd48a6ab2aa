"""The ExecuTorch runner: the .pte in ExecuTorch's Python runtime, fed (input_ids, cache_position) chunks.

``reset`` loads the program afresh: the KV cache lives in the method's planned memory, which the runtime
initializes from the program (zeros) only when the program is loaded; re-loading a method of the same program
reuses its memory arena and the previous prompt's cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ParityError
from edgepack.parity import RUNNERS


@RUNNERS.register("executorch")
class ExecuTorchRunner:
    def __init__(self, export_root: Path, artifact, *, method: str = "forward"):
        import executorch.kernels.quantized  # noqa: F401 - registers the quantized ops a quantized program needs
        from executorch.runtime import Runtime

        self.path = Path(export_root) / artifact.path
        if not self.path.is_file():
            raise ParityError(f"{self.path} does not exist; re-run the export.")
        self.max_seq_len = artifact.max_seq_len
        self._method_name = method
        self._runtime = Runtime.get()
        self._program = self._method = None
        self.reset()

    def reset(self) -> None:
        self._program = self._method = None  # release the previous program's memory before loading the next
        try:
            self._program = self._runtime.load_program(self.path)
            self._method = self._program.load_method(self._method_name)
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError variants
            raise ParityError(f"The ExecuTorch runtime cannot load {self.path}: {exc}") from None
        self._position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        n = len(tokens)
        start, end = self._position, self._position + n
        if not 0 < n < self.max_seq_len or end > self.max_seq_len:
            raise ParityError(
                f"{n} token(s) at position {start} do not fit the program's {self.max_seq_len}-position KV cache."
            )
        inputs = (torch.tensor([list(tokens)], dtype=torch.long), torch.arange(start, end, dtype=torch.long))
        logits = self._method.execute(inputs)[0]
        self._position = end
        return logits[0].to(torch.float32).numpy().copy()
