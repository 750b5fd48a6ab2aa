"""The MLX target: every registered architecture exports the folder mlx-lm loads, runs in MLX (the ``mlx[cpu]``
wheel) with mlx-lm's own KV cache and matches eager transformers; quantized exports carry the code book's codes
exactly and pass their recipe's gate. The slow tier's README test answers a question with the real SmolLM2 through
mlx-lm (tests/test_readme.py)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest


from test_onnx import ARCHS, PROMPT, assert_fp32_matches_eager, lazy_exports
from test_onnx import export as export_one

# mlx-lm windows only llama-style layer_types beside a full layer and Gemma 3's pattern: the other windowed
# models export within their window (Gemma 2's 8 raised past max_seq_len 64) and are refused past it (below).
MLX_ARCHS = {**{k: v for k, v in ARCHS.items() if k != "mistral-sw8"}, "gemma2": ("gemma2", {"sliding_window": 128})}


export = partial(export_one, target="mlx")


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    return lazy_exports(tiny_checkpoint, tmp_path_factory, "mlx", MLX_ARCHS)


@pytest.mark.parametrize("key", list(MLX_ARCHS))
def test_fp32_export_matches_eager(exports, key):
    assert_fp32_matches_eager(exports(key))


def test_the_folder_is_what_mlx_lm_load_reads(exports):
    """mlx_lm.load (model and tokenizer) takes the folder as it is, and generates."""
    from mlx_lm import generate, load

    _, artifact, root = exports("llama")
    folder = root / Path(artifact.path).parent
    model, tokenizer = load(str(folder))
    text = generate(model, tokenizer, prompt="hello", max_tokens=4)
    assert isinstance(text, str)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization" not in config and config["model_type"] == "llama"


@pytest.fixture(scope="module")
def int4_llama(tiny_int4_llama):
    return tiny_int4_llama


def test_int4_codes_are_the_code_books_exactly(int4_llama):
    """Unpacked from MLX's uint32 words, scales and biases, every quantized tensor is the code book's weight."""
    from safetensors.numpy import load_file

    from edgepack.codes import CodeBook
    from edgepack.export_record import ExportRecord

    out, _ = int4_llama
    record = ExportRecord.read(out)
    book = CodeBook(Path(record.codes["zero_points"].path))
    tensors = load_file(out / "mlx" / "model.safetensors")
    config = json.loads((out / "mlx" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    checked = 0
    for name in [n[: -len(".scales")] for n in tensors if n.endswith(".scales")]:
        words, scales, biases = (tensors[f"{name}.{k}"] for k in ("weight", "scales", "biases"))
        want = book.get(name)
        rows, cols = want.q.shape
        bits = words.shape[1] * 32 // cols
        codes = np.stack([(words >> (bits * j)) & ((1 << bits) - 1) for j in range(32 // bits)], -1)
        got = codes.reshape(rows, scales.shape[1], -1) * scales[..., None] + biases[..., None]
        assert np.abs(got.reshape(rows, cols) - want.dequantize().numpy()).max() < 1e-5, name
        checked += 1
    assert checked == 2 * 7 + 1  # 7 linears per layer, 2 layers, and the embedding (the tied head stored once)
    assert "lm_head.weight" not in tensors and config["tie_word_embeddings"] is True


def test_int4_export_passes_its_gate_beside_onnx(int4_llama):
    out, result = int4_llama
    parity = json.loads((out / "parity.json").read_text())
    by_target = {a["target"]: a for a in parity["artifacts"]}
    assert by_target["mlx"]["passed"], by_target["mlx"]
    # Both pack the same codes: their logits differ by conversion error only (MLX has no int8 activations).
    assert by_target["mlx"]["metrics"]["kl"] <= by_target["onnx"]["metrics"]["kl"] + 0.02


@pytest.mark.parametrize("arch, why", [("mistral", "mlx-lm applies a window only beside full-attention layers"),
                                       ("gemma2", "mlx-lm's gemma2 model applies no sliding window in this layout")])
def test_windows_mlx_lm_cannot_apply_are_refused_past_the_window(tiny_checkpoint, tmp_path, arch, why):
    from edgepack.errors import ExportError

    with pytest.raises(ExportError, match=f"{why}. Export mlx with --max-seq-len 8 or less"):
        export(tiny_checkpoint(arch, sliding_window=8), tmp_path)


def test_sliding_layers_are_written_from_the_facts(exports):
    """Gemma 3 mixes sliding and full layers: the config names each layer's kind, as edgepack derived it."""
    checkpoint, artifact, root = exports("gemma3_text")
    config = json.loads((root / "mlx" / "config.json").read_text())
    windows = checkpoint.facts.windows
    assert config["layer_types"] == ["sliding_attention" if w else "full_attention" for w in windows]
    assert len(PROMPT) > checkpoint.facts.sliding_window  # the comparison above ran past the window
