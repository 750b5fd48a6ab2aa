"""The ONNX runner: an onnxruntime session over the exported decoder, carrying present -> past between calls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ArtifactError


class OnnxRunner:
    def __init__(self, export_root: Path, artifact, *, threads: int | None = None):
        import onnxruntime as ort

        path = Path(export_root) / artifact.path
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ArtifactError(f"onnxruntime cannot load {path}: {exc}") from None
        self.max_seq_len = artifact.max_seq_len
        self._past_names = [
            i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")
        ]
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        d = artifact.details
        self._kv_shape = (1, d["num_kv_heads"], 0, d["head_dim"])
        self._kv_dtype = np.float16 if d.get("kv_dtype") == "float16" else np.float32
        self.reset()

    def reset(self) -> None:
        empty = np.zeros(self._kv_shape, dtype=self._kv_dtype)
        self._past = {name: empty for name in self._past_names}
        self._position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        n = len(tokens)
        start, end = self._position, self._position + n
        feeds = {
            "input_ids": np.asarray(tokens, dtype=np.int64).reshape(1, n),
            "attention_mask": np.ones((1, end), dtype=np.int64),
            "position_ids": np.arange(start, end, dtype=np.int64).reshape(1, n),
            **self._past,
        }
        outputs = self.session.run(["logits", *self._present_names], feeds)
        self._past = dict(zip(self._past_names, outputs[1:]))
        self._position = end
        return np.asarray(outputs[0][0], dtype=np.float32)
