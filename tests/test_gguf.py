"""The GGUF target: every registered architecture exports one .gguf whose weights and keys alone rebuild the model
(gguf's reader, the dequantized weights in transformers: within 1e-4 of eager at fp32); quantized exports carry the
code book's integer codes in llama.cpp's blocks, bit for bit; the tokenizer, chat template and an ollama Modelfile
travel with it. The slow tier runs the files in llama.cpp itself (llama-cpp-python, built once and cached):
every tiny architecture against eager, and SmolLM2 answering a question.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from test_onnx import ARCHS, PROMPT, QUESTION, assert_fp32_matches_eager, lazy_exports, run_and_compare
from test_onnx import export as export_one

# llama.cpp applies no window for Mistral's or Ministral 8B's layouts: those export within their window only
# (below); Ministral 3 (YaRN + Llama-4 query scaling, tied head) joins the ONNX list.
# Llama 3's rope (per-frequency factors, a rope_freqs tensor in the GGUF) with a tiny original context so that
# every band of the scaling acts on the 16-dim heads.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 10000.0}  # fmt: skip
GGUF_ARCHS = {**{k: v for k, v in ARCHS.items() if k != "mistral-sw8"}, "ministral3": ("ministral3", {}),
              "llama3-rope": ("llama", {"rope_parameters": LLAMA3_ROPE})}  # fmt: skip

export = partial(export_one, target="gguf")


@pytest.fixture(scope="module", autouse=True)
def torch_engine():
    """The default tier checks the file through gguf's reader, whether or not llama.cpp is installed here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPACK_GGUF_ENGINE", "torch")
        yield


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    return lazy_exports(tiny_checkpoint, tmp_path_factory, "gguf", GGUF_ARCHS)


def _reader(root: Path, artifact):
    from gguf import GGUFReader

    return GGUFReader(root / artifact.path)


def _kv(reader) -> dict:
    return {name: f.contents() for name, f in reader.fields.items()}


@pytest.mark.parametrize("key", list(GGUF_ARCHS))
def test_fp32_export_matches_eager(exports, key):
    assert_fp32_matches_eager(exports(key))


def test_transformers_own_gguf_loader_reads_the_file(exports):
    """An independent reader: transformers' GGUF loader (llama.cpp's conventions undone its own way) gets the
    eager model's logits from the file, so the q/k row order and the keys are llama.cpp's, not just edgepack's."""
    import torch
    from transformers import AutoModelForCausalLM

    checkpoint, artifact, root = exports("llama")
    path = root / artifact.path
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    reference = checkpoint.load_model("float32")
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-4)


def test_keys_and_tokenizer_are_what_llama_cpp_reads(exports):
    checkpoint, artifact, root = exports("ministral3")
    kv = _kv(_reader(root, artifact))
    assert kv["general.architecture"] == "mistral3"
    rope = checkpoint.config_dict.get("text_config", checkpoint.config_dict)["rope_parameters"]
    assert kv["mistral3.rope.scaling.type"] == "yarn"
    assert kv["mistral3.rope.scaling.original_context_length"] == rope["original_max_position_embeddings"]
    assert kv["mistral3.attention.temperature_scale"] == pytest.approx(rope["llama_4_scaling_beta"])
    assert kv["tokenizer.ggml.model"] == "gpt2"
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == 320 and tokens[:5] == ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    assert set(types[:5]) == {3}  # CONTROL
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 4
    config = json.loads((checkpoint.path / "tokenizer_config.json").read_text())
    assert kv["tokenizer.chat_template"] == config["chat_template"]
    # the tiny byte-level tokenizer is no family llama.cpp knows: its default pre-tokenizer, and the export says so
    assert kv["tokenizer.ggml.pre"] == "default"
    assert any("pre-tokenizer llama.cpp does not know" in line for line in artifact.unhonoured)
    assert "output.weight" not in {t.name for t in _reader(root, artifact).tensors}  # tied: llama.cpp reads the embedding


@pytest.mark.slow
def test_tekken_gets_a_pre_tokenizer_llama_cpp_knows(tmp_path):
    """Mistral's real tekken file (mistral-common's wheel), converted to tokenizer.json as edgepack packages it,
    hashes to a pre-tokenizer llama.cpp implements (its converter's table), so no note is needed."""
    from pathlib import Path as P

    import gguf
    import mistral_common
    from transformers.integrations.mistral.tokenizer import MistralConverter

    from edgepack.backends.gguf.vocab import write_vocab

    tekken = P(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    MistralConverter(str(tekken)).converted().save(str(tmp_path / "tokenizer.json"))
    writer = gguf.GGUFWriter(tmp_path / "vocab.gguf", "mistral3")
    assert write_vocab(writer, tmp_path, 131072) == []
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    kv = _kv(gguf.GGUFReader(tmp_path / "vocab.gguf"))
    assert kv["tokenizer.ggml.pre"] == "pixtral" and len(kv["tokenizer.ggml.tokens"]) == 131072


def test_llama3_rope_travels_as_rope_freqs(exports):
    """The factors that scale Llama 3's rope are in the file (llama.cpp divides each frequency by them); the fp32
    comparison above passes only because the reader applies them: without them the rope differs."""
    from edgepack.backends.gguf.arch import rope_freqs

    checkpoint, artifact, root = exports("llama3-rope")
    factors = next(t for t in _reader(root, artifact).tensors if t.name == "rope_freqs.weight")
    want = rope_freqs(checkpoint.load_model("float32").config, 16)
    assert np.array_equal(np.asarray(factors.data), want)
    assert np.unique(want).size == 3 and want.min() == 1.0 and want.max() == 8.0  # all three bands: 1, smooth, 8


def test_gemma_windows_and_norms(exports):
    """Gemma 3: the per-layer sliding pattern from edgepack's facts, the local rope base, norms written as 1 + w."""
    checkpoint, artifact, root = exports("gemma3_text")
    reader = _reader(root, artifact)
    kv = _kv(reader)
    windows = checkpoint.facts.windows
    assert kv["gemma3.attention.sliding_window_pattern"] == [bool(w) for w in windows]
    assert kv["gemma3.attention.sliding_window"] == checkpoint.facts.sliding_window < len(PROMPT)
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    model = checkpoint.load_model("float32")
    assert np.allclose(np.asarray(norm.data), model.model.norm.weight.detach().numpy() + 1.0)


def test_modelfile_is_what_ollama_reads(exports):
    _, artifact, root = exports("llama")
    text = (root / "gguf" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}' in text  # ChatML, as the chat template
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 64" in text
    assert artifact.files == ["gguf/model.gguf", "gguf/Modelfile"]


@pytest.mark.parametrize("arch", ["mistral", "ministral"])
def test_windows_llama_cpp_cannot_apply_are_refused_past_the_window(tiny_checkpoint, tmp_path, arch):
    from edgepack.errors import ExportError

    overrides = {"sliding_window": 8} if arch == "mistral" else {}
    with pytest.raises(ExportError, match="llama.cpp applies no window for its llama architecture. Export gguf "
                                          "with --max-seq-len 8 or less"):  # fmt: skip
        export(tiny_checkpoint(arch, **overrides), tmp_path)
    checkpoint, artifact = export(tiny_checkpoint(arch, **overrides), tmp_path / "ok", max_seq_len=8)
    assert _kv(_reader(tmp_path / "ok", artifact))["llama.context_length"] == 8
    prompt = PROMPT[:6]
    metrics = run_and_compare(tmp_path / "ok", artifact, checkpoint.load_model("float32"), prompt=prompt, steps=2)
    assert metrics["max_abs_diff"] < 1e-4


def _unigram(folder: Path) -> None:
    from tokenizers import Tokenizer, models

    Tokenizer(models.Unigram([("<pad>", 0.0), ("a", -1.0)], 0, False)).save(str(folder / "tokenizer.json"))


def _oversized_vocab(folder: Path) -> None:
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"]["<extra>"] = 320  # one id past the 320-row embedding
    (folder / "tokenizer.json").write_text(json.dumps(data))


YARN_TWO_MSCALES = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 8, "rope_theta": 1e6,
                    "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 2.0, "mscale_all_dim": 1.0,
                    "llama_4_scaling_beta": 0.1}  # fmt: skip


@pytest.mark.parametrize("arch, overrides, edit, message", [
    ("gemma2", {"query_pre_attn_scalar": 32}, None, "query_pre_attn_scalar 32, llama.cpp by its head dim 16"),
    ("ministral3", {"rope_parameters": YARN_TWO_MSCALES}, None, "carries one YaRN mscale"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                  "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}}, None,
     "does not write rope type 'longrope'"),
    ("llama", {}, _unigram, "writes BPE tokenizers; this one is 'Unigram'"),
    ("llama", {}, _oversized_vocab, "the model's embedding 320 rows"),
], ids=["gemma-attention-scale", "yarn-two-mscales", "rope-type", "unigram-tokenizer", "tokenizer-past-vocab"])  # fmt: skip
def test_what_llama_cpp_cannot_express_is_refused(tmp_path, arch, overrides, edit, message):
    """Each refusal names the problem and says to export another target, before a file is left behind."""
    from edgepack.errors import ExportError
    from edgepack.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(arch, tmp_path / "model", **overrides)
    if edit:
        edit(folder)
    with pytest.raises(ExportError, match=message) as error:
        export(folder, tmp_path / "out")
    assert "Export another target" in str(error.value)


def test_cli_refuses_a_window_with_one_line(tiny_checkpoint, tmp_path):
    from click.testing import CliRunner

    from edgepack.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint("ministral")), "--target", "gguf",
                                       "--recipe", "fp32", "--max-seq-len", "16", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Export gguf with --max-seq-len 8 or less" in result.output and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- quantized: the code book's codes, bit for bit --------------------------------------------------------------


def _unpack(raw: np.ndarray, kind: str):
    """(codes [rows, cols], d [rows, blocks], m or None) from llama.cpp's Q4_0 / Q4_1 / Q8_0 rows (uint8)."""
    head = {"Q4_0": 2, "Q4_1": 4, "Q8_0": 2}[kind]
    per = head + (32 if kind == "Q8_0" else 16)
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, per)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if kind == "Q4_1" else None
    body = blocks[..., head:]
    if kind == "Q8_0":
        return body.copy().view(np.int8).reshape(rows, -1).astype(np.int32), d, m
    q = np.concatenate([body & 15, body >> 4], axis=-1).astype(np.int32)  # elements 0-15 low, 16-31 high nibbles
    return (q - 8 if kind == "Q4_0" else q).reshape(rows, -1), d, m


def _check_codes(root: Path, book, heads: dict) -> int:
    """Every quantized tensor's integer codes equal the book's (after llama.cpp's q/k row order is undone), and
    its scales are the book's rounded to fp16; returns how many tensors were checked."""
    from gguf import GGUFReader, MODEL_ARCH, get_tensor_name_map

    from edgepack.backends.gguf.blocks import unpermute_rows

    reader = GGUFReader(root / "gguf" / "model.gguf")
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, 2)
    checked = 0
    for module in book.tensors:
        tensor = next((t for t in reader.tensors if t.name == names.get_name(module) + ".weight"), None)
        if tensor is None:
            continue
        want = book.get(module)
        q, d, m = _unpack(np.asarray(tensor.data), tensor.tensor_type.name)
        if (rows := heads.get(module.rpartition(".")[2])) is not None:
            q, d = unpermute_rows(q, rows), unpermute_rows(d, rows)
            m = None if m is None else unpermute_rows(m, rows)
        repeat = want.group // 32
        assert np.array_equal(q, want.q.numpy().astype(np.int32)), module
        scale = np.repeat(want.scale.numpy(), repeat, axis=1)
        assert np.array_equal(d, scale.astype(np.float16).astype(np.float32)), module
        if want.zero is not None:
            zero = np.repeat(want.zero.numpy().astype(np.float32), repeat, axis=1)
            assert np.array_equal(m, (-scale * zero).astype(np.float16).astype(np.float32)), module
        checked += 1
    return checked


@pytest.fixture(scope="module")
def int4_llama(tiny_int4_llama):
    return tiny_int4_llama


def test_int4_codes_are_the_code_books_bit_for_bit(int4_llama):
    from edgepack.codes import CodeBook
    from edgepack.export_record import ExportRecord

    out, _ = int4_llama
    record = ExportRecord.read(out)
    book = CodeBook(Path(record.codes["zero_points"].path))
    assert _check_codes(out, book, {"q_proj": 4, "k_proj": 2}) == 2 * 7 + 1  # 7 linears x 2 layers + embedding
    artifact = json.loads((out / "gguf" / "artifact.json").read_text())
    assert artifact["details"]["tensor_types"] == {"F32": 5, "Q4_1": 14, "Q8_0": 1}  # the tied head stored once
    assert artifact["details"]["tied_embeddings"] is True


def test_int4_export_passes_its_gate_beside_onnx(int4_llama):
    out, _ = int4_llama
    parity = json.loads((out / "parity.json").read_text())
    by_target = {a["target"]: a for a in parity["artifacts"]}
    assert by_target["gguf"]["passed"], by_target["gguf"]
    # Both carry the same codes: their logits differ by conversion error only (fp16 scales here).
    assert by_target["gguf"]["metrics"]["kl"] <= by_target["onnx"]["metrics"]["kl"] + 0.02
    manifest = json.loads((out / "manifest.json").read_text())
    gguf = next(a for a in manifest["artifacts"] if a["target"] == "gguf")
    assert gguf["runtime"] == "llama.cpp" and gguf["requires"]["runtime"] == "llama.cpp"


def test_symmetric_int4_is_q4_0_with_the_books_codes(tiny_checkpoint, tmp_path):
    """A symmetric recipe (what XNNPACK gets) is Q4_0: codes c in -8..7 stored as c + 8, groups of 128 as four
    blocks repeating their scale."""
    from edgepack.codes import rtn

    recipe = tmp_path / "int4-sym.yaml"
    recipe.write_text("name: int4-sym\ndtype: float32\nrules:\n  - match: '*'\n"
                      "    weights: {bits: 4, group_size: 64, symmetric: true}\n")  # fmt: skip
    checkpoint, artifact = export(tiny_checkpoint("llama"), tmp_path, recipe=str(recipe))
    model = checkpoint.load_model("float32")

    class Book:  # the codes the exporter computed without a book: round to nearest, the one definition
        tensors = [n for n, m in model.named_modules() if n.endswith("_proj")]

        def get(self, name):
            return rtn(model.get_submodule(name).weight.detach(), 4, 64, True)

    assert _check_codes(tmp_path, Book(), {"q_proj": 4, "k_proj": 2}) == 14
    assert artifact.details["tensor_types"]["Q4_0"] == 14


def test_qwen2_int4_parity_splits_with_biases(tiny_checkpoint, tmp_path):
    """Qwen2's q/k/v biases are never quantized: the parity split's quantized reference used to hand them the
    weight's codes (a shape error) when it streamed the checkpoint."""
    from edgepack.pipeline import export as run_export

    result = run_export(tiny_checkpoint("qwen2"), out=tmp_path / "out", recipe="int4-block32-rtn", targets=["gguf"],
                        max_seq_len=64, parity_options={"decode_steps": 2})  # fmt: skip
    (artifact,) = result.parity.artifacts
    assert artifact.passed and artifact.split["quantization"]["kl"] > 0


# --- slow: llama.cpp itself ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp():
    from helpers import ensure_llama_cpp

    return ensure_llama_cpp()


@pytest.mark.slow
@pytest.mark.parametrize("key", list(GGUF_ARCHS) + ["ministral"])
def test_llama_cpp_runs_every_architecture_like_eager(llama_cpp, tiny_checkpoint, tmp_path, key):
    """fp32 files in llama.cpp (fp32 KV cache) against eager: the same argmax everywhere, logits within 3e-3
    (ggml's GELU reads an fp16 table: Gemma 2 moves by 1.3e-3)."""
    import shutil

    from edgepack.backends.gguf.runner import LlamaCppRunner

    arch, overrides = GGUF_ARCHS.get(key, ("ministral", {}))
    # llama.cpp sets Phi-3's special-token attributes by model name and expects its real tokens there
    source = shutil.copytree(tiny_checkpoint(arch, **overrides), tmp_path / "tiny-model")
    seq = 8 if key == "ministral" else 64
    checkpoint, artifact = export(source, tmp_path, max_seq_len=seq)
    runner = LlamaCppRunner(tmp_path / artifact.path, artifact.max_seq_len, artifact.weight_bits)
    prompt = PROMPT[:6] if key == "ministral" else PROMPT
    metrics = run_and_compare(tmp_path, artifact, checkpoint.load_model("float32"), prompt=prompt,
                              steps=2 if key == "ministral" else 8, runner=runner)  # fmt: skip
    assert metrics["top1"] == 1.0 and metrics["max_abs_diff"] < 3e-3, metrics


@pytest.mark.slow
def test_smollm2_gguf_answers_in_llama_cpp(llama_cpp, smollm2_int4):
    """The real SmolLM2 int4-block32 (GPTQ codes in Q4_1 blocks) in llama.cpp, chat template from the file."""
    from llama_cpp import Llama

    parity = json.loads((smollm2_int4 / "parity.json").read_text())
    gguf = next(a for a in parity["artifacts"] if a["target"] == "gguf")
    assert gguf["passed"], gguf
    llm = Llama(model_path=str(smollm2_int4 / "gguf" / "model.gguf"), n_ctx=256, verbose=False)
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"
    assert_same_tokens(llm, smollm2_int4 / "tokenizer")
    reply = llm.create_chat_completion([{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0.0)
    assert "Paris" in reply["choices"][0]["message"]["content"]


TOKEN_TEXT = "Hello world! Ça va? 3.14159 ids\n\n  indented <|im_start|>user\nWhat's 12+30?<|im_end|>"


def assert_same_tokens(llm, tokenizer_dir: Path) -> None:
    """llama.cpp's tokenizer, read from the file, splits text as the packaged tokenizer.json does."""
    from tokenizers import Tokenizer

    want = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(TOKEN_TEXT, add_special_tokens=False).ids
    assert llm.tokenize(TOKEN_TEXT.encode(), add_bos=False, special=True) == want


def _sentencepiece_style_tokenizer(folder: Path) -> None:
    """A byte-fallback BPE with a Metaspace pre-tokenizer (the layout of SentencePiece models converted to
    tokenizer.json: Mistral v0.1-v0.3, Llama 2, Phi-3), trained on a little text; ids in merge order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])  # fmt: skip
    text = ["Hello world, the quick brown fox jumps over the lazy dog. " * 20, "What is 12 plus 30? Indented ids."]
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    tokenizer.save(str(folder / "tokenizer.json"))


@pytest.mark.slow
def test_sentencepiece_style_vocab_tokenizes_in_llama_cpp_as_the_reference(llama_cpp, tmp_path):
    """A byte-fallback BPE is written as llama.cpp's "llama" vocabulary (scores in merge order, byte pieces as
    BYTE); llama.cpp, reading it from the file, tokenizes text (with bytes it has no piece for) as tokenizers does."""
    from llama_cpp import Llama

    from edgepack.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint("llama", tmp_path / "spm-model", vocab_size=640)
    _sentencepiece_style_tokenizer(folder)
    _, artifact = export(folder, tmp_path)
    llm = Llama(model_path=str(tmp_path / artifact.path), n_ctx=64, vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.ggml.model"] == "llama"
    assert_same_tokens(llm, folder)


@pytest.mark.slow
def test_a_dead_llama_cpp_process_is_one_clear_error(llama_cpp, tiny_checkpoint, tmp_path):
    """llama.cpp ending its process (an assertion, an illegal instruction) reaches parity as an ArtifactError."""
    from edgepack.backends.gguf.runner import LlamaCppProcess
    from edgepack.errors import ArtifactError

    _, artifact = export(tiny_checkpoint("llama"), tmp_path)
    runner = LlamaCppProcess(tmp_path, artifact)
    assert runner.forward(PROMPT[:3]).shape == (3, 320)
    runner.proc.kill()
    with pytest.raises(ArtifactError, match="llama.cpp's process ended"):
        runner.forward(PROMPT[:1])
