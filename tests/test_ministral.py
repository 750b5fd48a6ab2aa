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
from edgepack.backends import ExportRequest, get_exporter
from edgepack.parity import open_runner
from edgepack.recipes import load_recipe

MAX_SEQ_LEN = 64
PROMPT_LEN = 20  # past original_max_position_embeddings (8) twice, and past Ministral 8B's window (8)
DECODE_STEPS = 8
TOL = 1e-4
TRAIN_STEPS = 300


@pytest.fixture(scope="session")
def mistral3(tmp_path_factory):
    """Factory: ``mistral3("tensor" | "block" | None)`` -> a tiny Ministral 3 hub folder, built once each."""
    from edgepack.tiny import build_tiny_mistral3

    built = {}

    def make(fp8: str | None, train_steps: int = 0) -> Path:
        if (fp8, train_steps) not in built:
            folder = tmp_path_factory.mktemp(f"ministral3-{fp8}-{train_steps}")
            built[fp8, train_steps] = build_tiny_mistral3(folder, fp8=fp8, train_steps=train_steps)
        return built[fp8, train_steps]

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
    pytest.param("mistral3-fp8-tensor", "mlx", id="ministral3-fp8-mlx"),
    pytest.param("ministral", "mlx", id="ministral8b-mlx"),
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


# --- the tokenizer as each runtime reads it ------------------------------------------------------------------


def _mistral_common(tekken: Path):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(tekken))


@pytest.fixture(scope="module")
def packaged_tekken(mistral3, tmp_path_factory):
    from edgepack.tokenizer_package import package_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return package_tokenizer(resolve(mistral3("tensor")), out), out


def test_tekken_folder_is_packaged_for_every_runtime(packaged_tekken):
    package, out = packaged_tekken
    assert package.source == "tekken" and package.converted and package.reference == "mistral-common"
    assert package.runtime_files == {"executorch": "tekken.json", "onnxruntime": "tokenizer.json", "coreml": "tokenizer.json",
                                     "mlx": "tokenizer.json", "llama.cpp": "tokenizer.json"}  # fmt: skip
    assert {"tekken.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(package.files)
    assert package.chat_template == "mistral-common" and package.adds_bos and package.bos_fixed
    assert package.checked_strings == 11  # ten strings and one chat turn


def test_packaged_tokenizer_json_gives_mistral_commons_ids(packaged_tekken):
    """Checked independently of the export-time check: the packaged files against mistral-common directly."""
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    from edgepack.tokenizer import DeviceTokenizer
    from edgepack.tokenizer_package import CHAT_MESSAGES, FIDELITY_STRINGS

    _, out = packaged_tekken
    mistral = _mistral_common(out / "tekken.json")
    tekken = mistral.instruct_tokenizer.tokenizer
    device = DeviceTokenizer(out)
    for text in FIDELITY_STRINGS:
        assert device.tokenizer.encode(text).ids == tekken.encode(text, bos=True, eos=False), text
    want = mistral.encode_chat_completion(ChatCompletionRequest(messages=CHAT_MESSAGES)).tokens
    assert device.encode(device.apply_chat_template(CHAT_MESSAGES)) == want
    assert want[:2] == [1, 3]  # <s>[INST]: control tokens, not text


@pytest.mark.parametrize("version", ["tekken_240911.json"])
def test_a_full_size_real_tekken_converts_faithfully(version, tmp_path):
    """The real 131k-token tekken file from mistral-common's wheel (not a truncated copy)."""
    import shutil

    import mistral_common

    from edgepack.checkpoint import resolve
    from edgepack.tiny import build_tiny_checkpoint
    from edgepack.tokenizer_package import package_tokenizer

    model = build_tiny_checkpoint("mistral", tmp_path / "m", vocab_size=131072, hidden_size=16, intermediate_size=32,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_hidden_layers=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    shutil.copy(Path(mistral_common.__file__).parent / "data" / version, model / "tekken.json")
    package = package_tokenizer(resolve(model), tmp_path / "tokenizer")
    assert package.checked_strings == 11 and package.adds_bos


def test_sentencepiece_only_folder_is_refused_when_its_conversion_drifts(tmp_path):
    """transformers' conversion of Mistral's v3 sentencepiece model differs from sentencepiece on whitespace
    runs and code indentation (measured); the export says so, with the string and both id lists."""
    import shutil

    import mistral_common

    from edgepack.errors import CheckpointError
    from edgepack.tiny import build_tiny_checkpoint
    from edgepack.tokenizer_package import package_tokenizer

    model = build_tiny_checkpoint("mistral", tmp_path / "m", vocab_size=32768)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    sp = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    shutil.copy(sp, model / "tokenizer.model")
    with pytest.raises(CheckpointError, match=r"converted from sentencepiece\) tokenizes .* where the reference "
                                              r"\(sentencepiece\) gives \[1, .*--target executorch only"):
        package_tokenizer(resolve(model), tmp_path / "tokenizer")
    # ExecuTorch alone reads tokenizer.model natively: the same folder packages without the tokenizer.json check.
    package = package_tokenizer(resolve(model), tmp_path / "tokenizer2", needs_json=False)
    assert package.runtime_files["executorch"] == "tokenizer.model"


@pytest.fixture(scope="module")
def bos_model(tiny_checkpoint, tmp_path_factory):
    """A tiny Llama whose tokenizer_config asks for BOS while its tokenizer.json does not add it (as a GGUF
    conversion leaves it)."""
    import shutil

    model = shutil.copytree(tiny_checkpoint("llama"), tmp_path_factory.mktemp("bos") / "model")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "add_bos_token": True}))
    return model


def test_bos_the_config_asks_for_reaches_onnxruntime_genai(bos_model, tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    from tokenizers import Tokenizer

    from edgepack.pipeline import export

    assert Tokenizer.from_file(str(bos_model / "tokenizer.json")).encode("Paris").ids[0] != 1
    result = export(bos_model, out=tmp_path / "out", recipe="fp32", targets=["onnx"], max_seq_len=32, parity=False)
    record = json.loads((result.out / "export.json").read_text())["tokenizer"]
    assert record["bos_fixed"] and record["adds_bos"]
    tokenizer = og.Tokenizer(og.Model(str(result.out / "onnx")))
    tokenizer.update_options(add_special_tokens="true")  # genai 0.18's encode adds none unless asked
    ids = [int(i) for i in tokenizer.encode("The capital of France")]
    want = Tokenizer.from_file(str(bos_model / "tokenizer.json")).encode("The capital of France").ids
    assert ids == [1] + want
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["tokenizer"]["adds_bos"] is True
    assert manifest["tokenizer"]["runtime_files"]["onnxruntime"] == "tokenizer/tokenizer.json"


def test_the_packaged_tokenizer_class_loads_in_swift_transformers_and_transformers(tiny_checkpoint, tmp_path):
    """transformers 5 saves ``TokenizersBackend``, which swift-transformers 0.1 refuses: the bundle names the BPE
    tokenizer ``PreTrainedTokenizerFast`` instead, and transformers still gives the checkpoint's ids."""
    import shutil

    from transformers import AutoTokenizer

    from edgepack.tokenizer_package import SWIFT_TRANSFORMERS_CLASSES, package_tokenizer

    model = shutil.copytree(tiny_checkpoint("llama"), tmp_path / "model")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "TokenizersBackend"}))
    package_tokenizer(resolve(model), tmp_path / "tokenizer")
    packaged = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
    assert packaged["tokenizer_class"].removesuffix("Fast") in SWIFT_TRANSFORMERS_CLASSES
    assert packaged["edgepack_tokenizer_class"] == "TokenizersBackend"
    text = "The capital of France is Paris."
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(model)(text)["input_ids"]


# --- the whole pipeline, int4, and what the record says ------------------------------------------------------


@pytest.fixture(scope="module")
def int4_export(mistral3, tmp_path_factory):
    """The FP8 Ministral 3 fixture, briefly trained (random weights make any int4 gate a coin toss), through the
    real pipeline: int4-block32 to every target, parity gate included."""
    from edgepack.pipeline import export

    out = tmp_path_factory.mktemp("m3-int4") / "out"
    return export(mistral3("tensor", train_steps=TRAIN_STEPS), out=out, recipe="int4-block32", max_seq_len=MAX_SEQ_LEN,
                  parity_options={"decode_steps": 8})  # fmt: skip


def test_int4_block32_passes_the_parity_gate_on_every_target(int4_export):
    assert {a.target for a in int4_export.artifacts} == {"executorch", "onnx", "coreml", "mlx", "gguf"}
    assert int4_export.parity.passed, int4_export.parity.failure_message(int4_export.out)


def test_record_and_manifest_say_what_was_exported_and_what_was_not(int4_export):
    record = json.loads((int4_export.out / "export.json").read_text())
    ckpt = record["checkpoint"]
    assert ckpt["architecture"] == "ministral3" and ckpt["wrapper"] == "mistral3"
    assert ckpt["source_precision"] == "fp8" and ckpt["dtype"] == "bfloat16"
    assert ckpt["rope"]["rope_type"] == "yarn" and ckpt["rope"]["llama_4_scaling_beta"] == 0.1
    assert set(ckpt["not_exported"]) == {"vision_tower", "multi_modal_projector"}
    assert ckpt["vocab_size"] == 1536 and ckpt["num_layers"] == 2
    manifest = json.loads((int4_export.out / "manifest.json").read_text())
    assert manifest["model"]["source_precision"] == "fp8"
    assert "vision encoder" in manifest["model"]["not_exported"]["vision_tower"]
    assert manifest["tokenizer"]["runtime_files"]["executorch"] == "tokenizer/tekken.json"
    assert manifest["tokenizer"]["chat_template"]["path"] == "tokenizer/chat_template.jinja"


def test_parity_chat_prompts_use_the_mistral_instruct_format(int4_export):
    from edgepack.parity.prompts import builtin_prompts
    from edgepack.tokenizer import DeviceTokenizer

    parity = json.loads((int4_export.out / "parity.json").read_text())
    measured = {p["prompt"] for a in parity["artifacts"] for p in a["per_prompt"]}
    assert {"chat-0", "chat-1"} <= measured
    prompts = builtin_prompts(DeviceTokenizer(int4_export.out / "tokenizer"), None, MAX_SEQ_LEN)
    chat = [p.ids for p in prompts if p.name.startswith("chat")]
    assert chat and all(ids[:2] == (1, 3) and ids[-1] == 4 for ids in chat)  # <s>[INST] ... [/INST]


def test_inspect_shows_precision_parts_rope_and_windows(mistral3, tiny_checkpoint):
    from click.testing import CliRunner

    from edgepack.cli import main

    result = CliRunner().invoke(main, ["inspect", str(mistral3("tensor"))])
    assert result.exit_code == 0, result.output
    for text in ("source_precision fp8", "rope             yarn (factor 16.0, original 8, llama-4 query scaling 0.1)",
                 "not exported     vision_tower (Pixtral vision encoder", "tokenizer        tekken"):
        assert text in result.output, result.output
    result = CliRunner().invoke(main, ["inspect", str(tiny_checkpoint("ministral"))])
    assert "windows          8 (layers 0, 1, 2), full (layer 3)" in result.output, result.output


# --- bad input -----------------------------------------------------------------------------------------------


def _break(kind: str, model: Path):
    cfg = json.loads((model / "config.json").read_text())
    if kind == "fp8 tensor without its scale":
        from safetensors import safe_open
        from safetensors.torch import save_file

        shard = model / "model-00002-of-00002.safetensors"
        with safe_open(str(shard), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if not k.endswith("layers.0.self_attn.q_proj.weight_scale_inv")}
        save_file(tensors, str(shard), metadata={"format": "pt"})
        index = json.loads((model / "model.safetensors.index.json").read_text())
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or "00001" in v}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "mistral3 without text_config":
        del cfg["text_config"]
    elif kind == "tekken larger than the model's vocab":
        from edgepack.tiny import write_tiny_tekken

        write_tiny_tekken(model / "tekken.json", vocab_size=2048)
    elif kind == "unknown rope type":
        cfg["text_config"]["rope_parameters"]["rope_type"] = "dynamic"
    (model / "config.json").write_text(json.dumps(cfg))


BAD = {
    "fp8 tensor without its scale": "has FP8 tensors without their scale (language_model.model.layers.0.self_attn."
                                    "q_proj.weight lack *_scale_inv), so they cannot be dequantized. The checkpoint "
                                    "is incomplete: re-download it.",
    "mistral3 without text_config": "is a mistral3 (multimodal) config without a text_config naming the language "
                                    "model's model_type. Re-download the checkpoint's config.json.",
    "tekken larger than the model's vocab": "has 2048 ids but the model has 1536 embeddings",
    "unknown rope type": "asks for rope type 'dynamic', which edgepack cannot export (supported: default, linear, yarn",
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_ministral_checkpoints_give_one_line_and_exit_2(kind, mistral3, tmp_path):
    import shutil

    from click.testing import CliRunner

    from edgepack.cli import main

    model = shutil.copytree(mistral3("tensor"), tmp_path / "model")
    _break(kind, model)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(model), "--out", str(out), "--quiet", "--target", "onnx"])
    assert result.exit_code == 2, result.output
    assert BAD[kind] in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_executorch_llm_runner_reads_the_packaged_tekken(int4_export):
    """ExecuTorch's own LLM runner, given the .pte and tokenizer/tekken.json, tokenizes the chat prompt as the
    packaged tokenizer.json does: its greedy text equals edgepack's runner fed those ids."""
    import executorch.kernels.quantized  # noqa: F401 - quantized kernels for the runner
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edgepack.backends import Artifact
    from edgepack.backends.executorch.model import load_custom_ops
    from edgepack.tokenizer import DeviceTokenizer

    load_custom_ops()
    root = int4_export.out
    tokenizer = DeviceTokenizer(root / "tokenizer")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    pieces: list[str] = []
    runner = TextLLMRunner(str(root / "executorch" / "model.pte"), str(root / "tokenizer" / "tekken.json"))
    runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=8, temperature=0.0), pieces.append)

    ours = open_runner(root, Artifact.read(root / "executorch"))
    ids = tokenizer.encode(prompt)
    logits = ours.forward(ids)
    new = []
    for _ in range(8):
        new.append(int(logits[-1].argmax()))
        if new[-1] in tokenizer.eos_ids:
            break
        logits = ours.forward(new[-1:])
    assert "".join(pieces).strip() and "".join(pieces) == tokenizer.decode(new[: len(new)])


def test_onnxruntime_genai_runs_the_ministral3_folder_with_mistral_commons_ids(int4_export):
    og = pytest.importorskip("onnxruntime_genai")
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    folder = int4_export.out / "onnx"
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    tokenizer.update_options(add_special_tokens="true")
    tekken = Tekkenizer.from_file(int4_export.out / "tokenizer" / "tekken.json")
    for text in ("The capital of France is", "  code:\n\tx = 1"):
        assert [int(i) for i in tokenizer.encode(text)] == tekken.encode(text, bos=True, eos=False)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("The capital of France is"))
    steps = 0
    while not generator.is_done() and steps < 8:
        generator.generate_next_token()
        steps += 1
    assert steps == 8


@pytest.mark.parametrize("fp8", ["tensor", "block"])
def test_fp8_weights_stream_in_bit_identical_to_transformers_dequantization(mistral3, fp8):
    """Per tensor and per 32x32 block: the streamed load equals transformers' own CPU dequantization (bf16)."""
    from transformers import Mistral3ForConditionalGeneration

    path = mistral3(fp8)
    ours = resolve(path).load_model()
    theirs = Mistral3ForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).state_dict()
    assert next(ours.parameters()).dtype == torch.bfloat16
    for name, tensor in ours.state_dict().items():
        key = "model.language_model." + name.removeprefix("model.") if name.startswith("model.") else name
        assert torch.equal(theirs[key], tensor), name
