"""The anchors' runners (``edgepack.anchors``), with edgepack's reset/forward/max_seq_len interface.

They run inside the anchors' venv, in the bench worker (``edgepack.bench.worker``): this module imports only the
standard library and numpy at the top, and no other edgepack module than the backends' runners it reuses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

def open_anchor(spec: dict, threads: int | None):
    """(runner, {"path", "note"}) for the anchor ``spec`` names."""
    name, path, max_seq_len = spec["anchor"], Path(spec["path"]), int(spec["max_seq_len"])
    info = {"path": str(path), "note": ""}
    if name == "optimum-executorch":
        return _pte_runner(path, max_seq_len), info
    if name == "onnxruntime-genai":
        return OnnxFolderRunner(path, max_seq_len, threads), info
    if name == "llama.cpp":
        return LlamaCppRunner(path, max_seq_len, threads), {**info, "note": "llama.cpp computes the last position's logits only"}
    raise ValueError(f"unknown anchor {name!r}; known: optimum-executorch, onnxruntime-genai, llama.cpp")


def _pte_runner(path: Path, max_seq_len: int):
    # edgepack's own ExecuTorch runner: the same runtime calls, so only the program differs.
    from types import SimpleNamespace

    from edgepack.backends.executorch.runner import ExecuTorchRunner

    return ExecuTorchRunner(path.parent, SimpleNamespace(path=path.name, max_seq_len=max_seq_len))


class OnnxFolderRunner:
    """An onnxruntime session over a genai-layout decoder: feeds only the inputs the graph declares."""

    def __init__(self, folder: Path, max_seq_len: int, threads: int | None):
        import onnxruntime as ort

        config = json.loads((folder / "genai_config.json").read_text())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        model = folder / config["model"]["decoder"]["filename"]
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.max_seq_len = min(max_seq_len, int(config["model"].get("context_length", max_seq_len)))
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._past = [n for n in self._inputs if n.startswith("past_key_values.")]
        self._present = [n.replace("past_key_values.", "present.") for n in self._past]
        decoder = config["model"]["decoder"]
        self._kv_heads, self._head_size = decoder["num_key_value_heads"], decoder["head_size"]
        self.reset()

    def reset(self) -> None:
        import numpy as np

        def empty(name):  # the graph's KV dims are symbolic: the shape comes from genai_config
            dtype = np.float16 if "float16" in self._inputs[name].type else np.float32
            return np.zeros((1, self._kv_heads, 0, self._head_size), dtype=dtype)

        self._kv = {name: empty(name) for name in self._past}
        self._position = 0

    def forward(self, tokens):
        import numpy as np

        n = len(tokens)
        start, end = self._position, self._position + n
        feeds = {
            "input_ids": np.asarray(tokens, dtype=np.int64).reshape(1, n),
            "attention_mask": np.ones((1, end), dtype=np.int64),
            "position_ids": np.arange(start, end, dtype=np.int64).reshape(1, n),
            **self._kv,
        }
        feeds = {k: v for k, v in feeds.items() if k in self._inputs}
        outputs = self.session.run(["logits", *self._present], feeds)
        self._kv = dict(zip(self._past, outputs[1:]))
        self._position = end
        return np.asarray(outputs[0][0], dtype=np.float32)


class LlamaCppRunner:
    """llama.cpp on a GGUF; ``forward`` returns the last position's logits only (all llama.cpp computes)."""

    def __init__(self, gguf: Path, max_seq_len: int, threads: int | None):
        from llama_cpp import Llama

        threads = threads or os.cpu_count()
        self.llm = Llama(model_path=str(gguf), n_ctx=max_seq_len, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, logits_all=False, verbose=False)  # fmt: skip
        self.max_seq_len = max_seq_len

    def reset(self) -> None:
        self.llm.reset()  # the next eval drops the cache past position 0

    def forward(self, tokens):
        import numpy as np

        self.llm.eval(list(tokens))
        # eval no longer copies logits unless logits_all; read the last position's straight from the context
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return logits.astype(np.float32)[None, :]
