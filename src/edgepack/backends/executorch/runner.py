"""The ExecuTorch runner: the .pte in ExecuTorch's Python runtime, fed (input_ids, cache_position) chunks of at
most the program's ``prefill_chunk`` tokens.

``reset`` loads the program afresh: the KV cache lives in the method's planned memory, which the runtime
allocates zero-filled only when the program is loaded; re-loading a method of the same program reuses its memory
arena and the previous prompt's cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ParityError


class ExecuTorchRunner:
    def __init__(self, export_root: Path, artifact, *, method: str = "forward"):
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401 - registers custom_sdpa, update_cache
        import executorch.kernels.quantized  # noqa: F401 - registers the quantized ops a quantized program needs
        from executorch.runtime import Runtime

        self.path = Path(export_root) / artifact.path
        if not self.path.is_file():
            raise ParityError(f"{self.path} does not exist; re-run the export.")
        details = getattr(artifact, "details", {})
        data_file = details.get("data_file")  # model.ptd: the weights of a program too large for one file
        self.data_path = self.path.parent / data_file if data_file else None
        if self.data_path is not None and not self.data_path.is_file():
            raise ParityError(f"{self.data_path} (the weights of {self.path.name}) does not exist; re-run the export.")
        self.max_seq_len = artifact.max_seq_len
        # Programs exported before prefill chunks were bounded take any n < max_seq_len.
        self._chunk = details.get("prefill_chunk") or artifact.max_seq_len - 1
        self._method_name = method
        self._runtime = Runtime.get()
        self._program = self._method = None
        self.reset()

    def reset(self) -> None:
        from edgepack.native import captured_stderr

        self._program = self._method = None  # release the previous program's memory before loading the next
        # The runtime logs its CPU probe to fd 2 on the first load; kept only to explain a failure.
        with captured_stderr() as log:
            try:
                self._program = self._runtime.load_program(self.path, data_path=self.data_path)
                self._method = self._program.load_method(self._method_name)
                failure = None
            except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError variants
                failure = exc
        if failure is not None:
            said = log.text.strip().splitlines()[-3:]
            detail = f" (runtime log: {' | '.join(said)})" if said else ""
            raise ParityError(f"The ExecuTorch runtime cannot load {self.path}: {failure}{detail}")
        self._position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        n = len(tokens)
        start, end = self._position, self._position + n
        if not 0 < n < self.max_seq_len or end > self.max_seq_len:
            raise ParityError(
                f"{n} token(s) at position {start} do not fit the program's {self.max_seq_len}-position KV cache."
            )
        tokens, chunks = list(tokens), []
        for at in range(0, n, self._chunk):  # the program takes at most prefill_chunk tokens per call
            piece = tokens[at : at + self._chunk]
            ids = torch.tensor([piece], dtype=torch.long)
            positions = torch.arange(start + at, start + at + len(piece), dtype=torch.long)
            chunks.append(self._method.execute((ids, positions))[0][0].to(torch.float32).numpy().copy())
        self._position = end
        return np.concatenate(chunks, axis=0)


def set_threads(threads: int) -> None:
    """XNNPACK's thread pool is process-wide: size it before a program is loaded."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
