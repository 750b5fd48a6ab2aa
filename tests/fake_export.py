"""Fabricate an export folder exactly per the export-folder contract, with small files standing in for models.

Shapes are SmolLM2-135M's (30 layers, 3 KV heads of 64, hidden 576, 9 heads, vocab 49152), so the memory
numbers in the manifest can be checked against arithmetic done by hand in the tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from edgepack.backends import Artifact

SMOLLM2 = {
    "source": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "num_parameters": 134515008,
    "dtype": "bfloat16",
    "weights_digest": "sha256:" + "ab" * 32,
    "context_length": 8192,
    "sliding_window": None,
    "license": "apache-2.0",
    "num_layers": 30,
    "num_kv_heads": 3,
    "head_dim": 64,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "vocab_size": 49152,
    "layer_types": ["full_attention"] * 30,
}
RECIPE = {"name": "int4-block32", "dtype": "float32", "parity": {"min_cosine": 0.99}}
METRICS = {"max_abs_diff": 0.8, "mean_abs_diff": 0.05, "cosine": 0.995, "top1": 0.97, "top5_overlap": 0.93,
           "kl": 0.01, "greedy_agreement": 1.0}  # fmt: skip
THRESHOLDS = {"max_abs_diff": None, "min_cosine": 0.99, "min_top1": 0.9, "min_top5_overlap": 0.8, "max_kl": 0.05,
              "min_greedy_agreement": 0.9}  # fmt: skip


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _write(path: Path, data: bytes | str | dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, dict):
        data = json.dumps(data, indent=2)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def tokenizer_files(folder: Path) -> None:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<|im_start|>": 3, "<|im_end|>": 4, "a": 5, "b": 6}
    _write(folder / "tokenizer.json", {
        "version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "added_tokens": [{"id": i, "content": t, "special": True} for t, i in vocab.items() if i < 5],
    })  # fmt: skip
    _write(
        folder / "tokenizer_config.json",
        {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>"},
    )
    _write(folder / "generation_config.json", {"bos_token_id": 1, "eos_token_id": [2, 4], "do_sample": True,
                                               "temperature": 0.2, "top_p": 0.9})  # fmt: skip
    _write(folder / "chat_template.jinja", "{% for m in messages %}{{ m['content'] }}{% endfor %}")


def make_export(root: Path, *, targets=("executorch", "onnx", "coreml"), parity="passed", checkpoint=None,
                max_seq_len=2048, details=None) -> Path:  # fmt: skip
    """An export folder at ``root``. parity: "passed", "failed" (onnx fails), or None (--no-parity)."""
    ckpt = {**SMOLLM2, **(checkpoint or {})}
    _write(root / "export.json", {
        "edgepack_version": "0.1.0", "checkpoint": ckpt, "recipe": RECIPE, "recipe_digest": "cd" * 32,
        "max_seq_len": max_seq_len, "targets": list(targets),
    })  # fmt: skip
    tokenizer_files(root / "tokenizer")
    artifacts = [_MAKERS[t](root, max_seq_len, (details or {}).get(t, {})) for t in targets]
    if parity is not None:
        _write(root / "parity.json", _parity(artifacts, parity))
    return root


def _executorch(root: Path, n: int, details: dict) -> Artifact:
    _write(root / "executorch/model.pte", _blob(1, 6000))
    return _save(root, Artifact("executorch", "executorch", "executorch/model.pte", ["executorch/model.pte"],
                                "int4-block32", 4, n, "executorch 1.5", 12.5, [], details))  # fmt: skip


def _onnx(root: Path, n: int, details: dict) -> Artifact:
    _write(root / "onnx/model.onnx", _blob(2, 3000))
    _write(root / "onnx/model.onnx.data", _blob(3, 9000))
    _write(root / "onnx/genai_config.json", {"model": {"context_length": n}})
    tokenizer_files(root / "onnx")
    files = ["onnx/model.onnx", "onnx/model.onnx.data", "onnx/genai_config.json", "onnx/tokenizer.json",
             "onnx/tokenizer_config.json"]  # fmt: skip
    return _save(root, Artifact("onnx", "onnxruntime", "onnx/model.onnx", files, "int4-block32", 4, n,
                                "onnxruntime 1.20", 7.0, [], details))  # fmt: skip


def _coreml(root: Path, n: int, details: dict) -> Artifact:
    pkg = root / "coreml/model.mlpackage"
    _write(pkg / "Manifest.json", {"fileFormatVersion": "1.0.0"})
    _write(pkg / "Data/com.apple.CoreML/model.mlmodel", _blob(4, 2000))
    _write(pkg / "Data/com.apple.CoreML/weights/weight.bin", _blob(5, 8000))
    return _save(root, Artifact("coreml", "coreml", "coreml/model.mlpackage", ["coreml/model.mlpackage"],
                                "int4-block32", 4, n, "iOS 18", 30.0, ["embedding: int8 kept at fp16"], details))  # fmt: skip


def _save(root: Path, a: Artifact) -> Artifact:
    a.save(root / a.target)
    return a


_MAKERS = {"executorch": _executorch, "onnx": _onnx, "coreml": _coreml}


def _parity(artifacts: list[Artifact], outcome: str) -> dict:
    entries = []
    for a in artifacts:
        failed = outcome == "failed" and a.target == "onnx"
        metrics = {**METRICS, "cosine": 0.91} if failed else METRICS
        failures = [{"metric": "cosine", "value": 0.91, "threshold": 0.99}] if failed else []
        entries.append({"target": a.target, "path": a.path, "recipe": a.recipe, "passed": not failed,
                        "metrics": metrics, "thresholds": THRESHOLDS, "failures": failures, "split": None})  # fmt: skip
    return {"schema_version": 1, "passed": all(e["passed"] for e in entries),
            "reference": {"model": SMOLLM2["model_id"], "dtype": "float32"}, "prompts": 4, "decode_steps": 16,
            "artifacts": entries}  # fmt: skip
