"""Mistral's edge models as they ship: Ministral 3 (the ``mistral3`` vision-language wrapper, FP8 or BF16
weights, YaRN rope with Llama-4 query scaling, tekken) and Ministral 8B (sliding and full attention per layer).

The fixtures are tiny checkpoints in the hub's exact layout (``edgepack.tiny.build_tiny_mistral3``). The
reference is transformers' own ``Mistral3ForConditionalGeneration`` (its FP8 dequantization, its text path),
run eagerly in float32; every target's fp32 export must match it within 1e-4 over a prompt that runs past
``original_max_position_embeddings`` (8) twice, then 8 single-token decode steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepack.checkpoint import resolve
from edgepack.exporters import ExportRequest, get_exporter
from edgepack.parity import open_runner
from edgepack.recipes import load_recipe

MAX_SEQ_LEN = 64
PROMPT_LEN = 20  # past original_max_position_embeddings (8) twice, and past Ministral 8B's window (8)
DECODE_STEPS = 8
TOL = 1e-4


@pytest.fixture(scope="session")
def mistral3(tmp_path_factory):
    """Factory: ``mistral3("tensor" | "block" | None)`` -> a tiny Ministral 3 hub folder, built once each."""
    from edgepack.tiny import build_tiny_mistral3

    built = {}

    def make(fp8: str | None) -> Path:
        if fp8 not in built:
            built[fp8] = build_tiny_mistral3(tmp_path_factory.mktemp(f"ministral3-{fp8}"), fp8=fp8)
        return built[fp8]

    return make


def _prompt(vocab: int) -> list[int]:
    return np.random.default_rng(0).integers(1000 if vocab > 1000 else 5, vocab, PROMPT_LEN).tolist()


def _reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """transformers' own model of the folder, eager float32 (a Mistral3 wrapper: its text path)."""
    from transformers import AutoConfig, AutoModelForCausalLM, Mistral3ForConditionalGeneration

    if AutoConfig.from_pretrained(path).model_type == "mistral3":
        # transformers dequantizes FP8 to bf16 on CPU; float32 after that is exact.
        model = Mistral3ForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).float()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.get_text_config()._attn_implementation = "eager"
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _export(path: Path, target: str, root: Path, recipe: str = "fp32"):
    checkpoint = resolve(path)
    folder = root / target
    folder.mkdir(parents=True)
    request = ExportRequest(checkpoint, load_recipe(recipe), MAX_SEQ_LEN, folder, prefill_chunk=8)
    artifact = get_exporter(target).export(checkpoint.load_model(), request)
    artifact.save(folder)
    return artifact


def _teacher_forced(runner, ids: list[int]) -> np.ndarray:
    """The prompt in one call (prefill chunks inside the runner), then one token per call."""
    runner.reset()
    out = [runner.forward(ids[:PROMPT_LEN])] + [runner.forward([t]) for t in ids[PROMPT_LEN:]]
    return np.concatenate(out)


FP32_CASES = [
    pytest.param("mistral3-fp8-tensor", target, id=f"ministral3-fp8-{target}") for target in ("onnx", "coreml", "executorch")
] + [
    pytest.param("mistral3-fp8-block", "onnx", id="ministral3-fp8block-onnx"),
    pytest.param("mistral3-bf16", "onnx", id="ministral3-bf16-onnx"),
    pytest.param("mistral3-bf16", "coreml", id="ministral3-bf16-coreml"),
    pytest.param("ministral", "onnx", id="ministral8b-onnx"),
    pytest.param("ministral", "coreml", id="ministral8b-coreml"),
    pytest.param("ministral", "executorch", id="ministral8b-executorch"),
]


@pytest.fixture(scope="module")
def fixture_path(mistral3, tiny_checkpoint):
    def get(name: str) -> Path:
        if name == "ministral":
            return tiny_checkpoint("ministral")
        return mistral3({"mistral3-fp8-tensor": "tensor", "mistral3-fp8-block": "block", "mistral3-bf16": None}[name])

    return get


@pytest.mark.parametrize("name, target", FP32_CASES)
def test_fp32_export_matches_transformers_past_the_rope_and_window_boundaries(fixture_path, name, target, tmp_path):
    path = fixture_path(name)
    artifact = _export(path, target, tmp_path)
    runner = open_runner(tmp_path, artifact)
    prompt = _prompt(resolve(path).config.vocab_size)
    # Greedy continuation from the export itself, then the reference over the same tokens (teacher forced).
    runner.reset()
    logits = [runner.forward(prompt)]
    ids = list(prompt)
    for _ in range(DECODE_STEPS):
        ids.append(int(logits[-1][-1].argmax()))
        logits.append(runner.forward(ids[-1:]))
    got = np.concatenate(logits)[:-1]
    want = _reference_logits(path, ids[:-1])
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    assert diff < TOL, f"{name} {target}: max |logit diff| {diff:.2e}"
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_the_query_scaling_and_yarn_are_not_silently_dropped(fixture_path, tmp_path):
    """Against a reference without Llama-4 query scaling the ONNX export must drift: the feature is in the graph."""
    from transformers import Mistral3ForConditionalGeneration

    path = fixture_path("mistral3-bf16")
    artifact = _export(path, "onnx", tmp_path)
    prompt = _prompt(resolve(path).config.vocab_size)
    got = _teacher_forced(open_runner(tmp_path, artifact), prompt)
    model = Mistral3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    model.config.text_config.rope_parameters["llama_4_scaling_beta"] = 0.0
    with torch.no_grad():
        unscaled = model(input_ids=torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(got - unscaled)[8:].max() > 1e-3  # positions >= 8 are scaled
    assert np.abs(got - unscaled)[:8].max() < TOL  # below original_max_position_embeddings nothing changes
