"""The ExecuTorch target and the torch-side recipe translation (``edgepack.backends.executorch.quantize``).

Every (architecture, recipe) is exported once per module (lowering to XNNPACK dominates the run time) and
checked through the ExecuTorch Python runtime against eager transformers: fp32 within 1e-4 max abs logit
difference over a prompt (one prefill chunk) plus 8 teacher-forced decode steps; int4 against the same
quantization applied eagerly (``quantize_model``), which isolates the conversion error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")

from edgepack.checkpoint import resolve
from edgepack.errors import ExportError, ParityError
from edgepack.backends import ExportRequest, get_exporter
from edgepack.parity import open_runner
from edgepack.backends.executorch.quantize import quantize_model, unhonoured
from edgepack.recipes import Recipe, load_recipe

MAX_SEQ_LEN = 64
PREFILL_CHUNK = 8  # below PROMPT_LEN, so every prompt is prefilled in several calls
PROMPT_LEN = 20  # longer than the tiny sliding windows (8)
DECODE_STEPS = 8

# (test id, model_type, tiny-config overrides); mistral is covered with and without a sliding window.
ARCHS = [
    ("llama", "llama", {}),
    ("mistral", "mistral", {}),
    ("mistral-sw8", "mistral", {"sliding_window": 8}),
    ("qwen2", "qwen2", {}),
    ("qwen3", "qwen3", {}),
    ("phi3", "phi3", {}),
    ("gemma2", "gemma2", {}),
    ("gemma3_text", "gemma3_text", {}),
]
# Lowering to XNNPACK costs about a minute of CPU per tiny model here, so the default tier exports a
# representative subset (Llama layout with tied embeddings; Mistral's sliding window; Gemma 2's (1+w) norms,
# scaled embeddings, soft-capping and local/global attention) and the slow tier the rest. ONNX and Core ML
# test every architecture in the default tier.
FP32_DEFAULT = {"llama", "mistral-sw8", "gemma2"}
# int4 .pte against eager quantization: slow tier only (51 s). The default tier still lowers int4 twice: the code
# book read back from every backend (test_codes' gptq_export) and Ministral 3's gate on every target.
INT4_DEFAULT: set[str] = set()


def _arch_params(default_ids=None):
    params = []
    for test_id, arch, overrides in ARCHS:
        marks = [] if default_ids is None or test_id in default_ids else [pytest.mark.slow]
        params.append(pytest.param(arch, overrides, id=test_id, marks=marks))
    return params


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """Factory: ``exported(arch, overrides, recipe)`` -> (export root, Artifact, checkpoint), built once each."""
    cache = {}

    def export(arch: str, overrides: dict, recipe: str):
        key = (arch, tuple(sorted(overrides.items())), recipe)
        if key not in cache:
            checkpoint = resolve(tiny_checkpoint(arch, **overrides))
            root = tmp_path_factory.mktemp(f"et-{arch}-{recipe}")
            folder = root / "executorch"
            request = ExportRequest(checkpoint, load_recipe(recipe), MAX_SEQ_LEN, folder, prefill_chunk=PREFILL_CHUNK)
            artifact = get_exporter("executorch").export(checkpoint.load_model(), request)
            artifact.save(folder)
            cache[key] = (root, artifact, checkpoint)
        return cache[key]

    return export


def _prompt(vocab: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (PROMPT_LEN,), generator=g).tolist()


def _eager_greedy(model, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    """Prompt + 8 greedy tokens from ``model``, and its logits at every position of prompt + first 7 tokens."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(DECODE_STEPS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        logits = model(torch.tensor([ids[:-1]])).logits[0].float().numpy()
    return ids[len(prompt):], logits


def _teacher_forced(runner, prompt: list[int], steps: list[int]) -> np.ndarray:
    """The prompt as one prefill chunk, then the decode tokens one at a time (all but the last is fed)."""
    runner.reset()
    chunks = [runner.forward(prompt)] + [runner.forward([t]) for t in steps[:-1]]
    return np.concatenate(chunks, axis=0)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- export + runtime parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, overrides", _arch_params(FP32_DEFAULT))
def test_fp32_pte_matches_eager(exported, arch, overrides):
    root, artifact, checkpoint = exported(arch, overrides, "fp32")
    model = checkpoint.load_model("float32")
    prompt = _prompt(model.config.vocab_size)
    steps, reference = _eager_greedy(model, prompt)
    got = _teacher_forced(open_runner(root, artifact), prompt, steps)
    assert got.shape == reference.shape == (PROMPT_LEN + DECODE_STEPS - 1, model.config.vocab_size)
    diff = float(np.abs(got - reference).max())
    assert diff <= 1e-4, f"{arch}: max |logit diff| {diff:.3g} > 1e-4"
    assert got[PROMPT_LEN - 1:].argmax(-1).tolist() == steps


@pytest.mark.parametrize("arch, overrides", _arch_params(INT4_DEFAULT))
def test_int4_pte_matches_eager_quantization(exported, arch, overrides):
    root, artifact, checkpoint = exported(arch, overrides, "int4-block32")
    model = checkpoint.load_model("float32")
    quantize_model(model, load_recipe("int4-block32"))
    prompt = _prompt(model.config.vocab_size, seed=1)
    steps, reference = _eager_greedy(model, prompt)
    got = _teacher_forced(open_runner(root, artifact), prompt, steps)
    assert np.isfinite(got).all()
    # Conversion error only: same weights, same int8 dynamic activations, XNNPACK's kernels vs torchao's.
    assert _cosine(got, reference) >= 0.999
    top1 = float((got.argmax(-1) == reference.argmax(-1)).mean())
    assert top1 >= 0.85, f"{arch}: argmax agrees at {top1:.0%} of positions"
    assert artifact.weight_bits == 4
    fp32_artifact = exported(arch, overrides, "fp32")[1]
    assert artifact.details["pte_bytes"] < 0.6 * fp32_artifact.details["pte_bytes"]


def test_artifact_describes_the_program(exported):
    root, artifact, _ = exported("llama", {}, "int4-block32")
    assert (artifact.target, artifact.runtime, artifact.min_runtime) == ("executorch", "executorch", "executorch 1.5")
    assert artifact.path == "executorch/model.pte" and artifact.files == ["executorch/model.pte"]
    assert artifact.details["data_file"] is None  # a small model's weights stay in the program
    assert (root / artifact.path).stat().st_size == artifact.details["pte_bytes"]
    assert artifact.max_seq_len == MAX_SEQ_LEN and artifact.recipe == "int4-block32"
    assert [i["name"] for i in artifact.details["inputs"]] == ["input_ids", "cache_position"]
    assert artifact.details["max_chunk"] == artifact.details["prefill_chunk"] == PREFILL_CHUNK
    # XNNPACK mis-lowers weight-only int8 linears: int8-weight's linears get dynamic activations, and it says so.
    int8 = get_exporter("executorch").unhonoured(load_recipe("int8-weight"))
    assert any(line.startswith("lm_head") and "dynamic activations" in line for line in int8)
    assert artifact.unhonoured == get_exporter("executorch").unhonoured(load_recipe("int4-block32"))


@pytest.mark.parametrize(
    "arch, overrides, window", [("llama", {}, None), ("mistral", {"sliding_window": 8}, 8)], ids=["llama", "mistral-sw8"]
)
def test_constant_methods_for_the_llm_runner(exported, arch, overrides, window):
    from executorch.runtime import Runtime

    root, artifact, _ = exported(arch, overrides, "fp32")
    program = Runtime.get().load_program(root / artifact.path)
    outputs = {name: program.load_method(name).execute(()) for name in program.method_names - {"forward"}}
    values = {name: out[0] if len(out) == 1 else list(out) for name, out in outputs.items()}
    # The LLM runner's meanings: most tokens per call, and the KV cache's length.
    assert (values["get_max_seq_len"], values["get_max_context_len"]) == (PREFILL_CHUNK, MAX_SEQ_LEN)
    assert values["get_vocab_size"] == 320 and values["get_n_layers"] == 2
    assert values["use_kv_cache"] is True and values["enable_dynamic_shape"] is True
    assert values["get_bos_id"] == 1
    assert set(values["get_eos_ids"]) == {2, 4}  # config's </s> and the tokenizer's <|im_end|>
    assert values.get("get_sliding_window") == window


def test_kv_cache_is_planned_memory_not_serialized(exported):
    """The KV cache buffers are planned memory with no contents in the file; the runtime zero-fills them at load,
    which the parity tests rely on."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    root, artifact, _ = exported("llama", {}, "fp32")
    program = deserialize_pte_binary((root / artifact.path).read_bytes()).program
    plan = next(p for p in program.execution_plan if p.name == "forward")
    tensors = [v.val for v in plan.values if type(v.val).__name__ == "Tensor"]
    kv_shape = [1, MAX_SEQ_LEN, 2, 16]  # batch, positions, kv heads, head dim (ExecuTorch's update_cache layout)
    caches = [t for t in tensors if list(t.sizes) == kv_shape]
    assert len(caches) == 2 * 2  # key + value for 2 layers
    assert all(t.allocation_info is not None and t.data_buffer_idx == 0 for t in caches)
    assert artifact.details["kv_cache"]["serialized"] is False


@pytest.mark.parametrize("arch, overrides", [("llama", {}), ("mistral", {"sliding_window": 8})], ids=["llama", "mistral-sw8"])
def test_program_updates_the_cache_in_place_and_attends_with_the_fused_op(exported, arch, overrides):
    """The decode-speed fix, structurally: ExecuTorch's in-place cache update and fused SDPA, once per layer, and
    none of the portable ops that copied each layer's whole cache every step (index_put + copy_, expand_copy)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    root, artifact, _ = exported(arch, overrides, "fp32")
    program = deserialize_pte_binary((root / artifact.path).read_bytes()).program
    plan = next(p for p in program.execution_plan if p.name == "forward")
    names = [op.name for op in plan.operators]
    calls = [names[i.instr_args.op_index] for c in plan.chains for i in c.instructions if hasattr(i.instr_args, "op_index")]
    assert calls.count("llama::update_cache") == 2 * 2  # K and V, 2 layers
    assert calls.count("llama::custom_sdpa") == 2
    assert not {"aten::index_put", "aten::index_put_", "aten::expand_copy", "aten::index_copy"} & set(calls)


@pytest.mark.slow  # a second ExecuTorch lowering (~50 s on 2 cores): the 4B .ptd path, in the slow tier
def test_weights_past_the_threshold_go_to_a_ptd_file_and_run_the_same(exported, tiny_checkpoint, tmp_path, monkeypatch):
    """With the size threshold lowered, every weight leaves the .pte for model.ptd (the 4B path): the program
    loads with its data file in the runtime and in the LLM runner, and computes exactly what the one-file .pte
    computes (the same codes, the same kernels)."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edgepack.backends.executorch import exporter as et_exporter

    root, single, checkpoint = exported("llama", {}, "int4-block32")
    monkeypatch.setattr(et_exporter, "EXTERNAL_DATA_BYTES", 0)
    folder = tmp_path / "executorch"
    request = ExportRequest(checkpoint, load_recipe("int4-block32"), MAX_SEQ_LEN, folder, prefill_chunk=PREFILL_CHUNK)
    artifact = get_exporter("executorch").export(checkpoint.load_model(), request)
    artifact.save(folder)

    assert artifact.files == ["executorch/model.pte", "executorch/model.ptd"]
    assert artifact.details["data_file"] == "model.ptd"
    pte, ptd = folder / "model.pte", folder / "model.ptd"
    assert (pte.stat().st_size, ptd.stat().st_size) == (artifact.details["pte_bytes"], artifact.details["data_bytes"])
    assert pte.stat().st_size < single.details["pte_bytes"] / 2  # the weights left the program

    prompt = _prompt(320, seed=5)
    expected = open_runner(root, single).forward(prompt)
    np.testing.assert_array_equal(open_runner(tmp_path, artifact).forward(prompt), expected)

    import executorch.kernels.quantized  # noqa: F401 - the LLM runner needs the quantized kernels registered

    stats = []  # counted, not decoded: a random tiny model's tokens need not be valid UTF-8 one by one
    runner = TextLLMRunner(str(pte), str(checkpoint.path / "tokenizer.json"), str(ptd))
    runner.generate("hello world", GenerationConfig(echo=False, max_new_tokens=4, temperature=0.0), None, stats.append)
    assert stats and 1 <= stats[-1].num_generated_tokens <= 4, "the LLM runner did not decode from program + data"

    ptd.unlink()
    with pytest.raises(ParityError, match=r"model\.ptd \(the weights of model\.pte\) does not exist"):
        open_runner(tmp_path, artifact)


def test_lowering_shares_the_weights_instead_of_copying_them():
    """ExecuTorch deep-copies each partition's program, weights included, before XNNPACK preprocesses it (at 4B a
    second 3.9 GB at once); during edgepack's lowering the copies share the weights, and only then."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    from edgepack.backends.executorch.exporter import _preprocess_shares_weights

    program = torch.export.export(torch.nn.Linear(64, 64), (torch.randn(2, 64),))
    with _preprocess_shares_weights():
        shared = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    copied = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    assert all(shared.state_dict[k] is v for k, v in program.state_dict.items())
    assert not any(copied.state_dict[k] is v for k, v in program.state_dict.items())
    assert shared.graph_module is not program.graph_module  # the graph is still XNNPACK's own copy


def test_runner_reset_starts_a_fresh_sequence(exported):
    root, artifact, _ = exported("llama", {}, "fp32")
    runner = open_runner(root, artifact)
    first, second = _prompt(320, seed=3), _prompt(320, seed=4)[:7]
    runner.forward(first)
    runner.reset()
    after_reset = runner.forward(second)
    fresh = open_runner(root, artifact).forward(second)
    np.testing.assert_array_equal(after_reset, fresh)


def test_runner_refuses_to_overflow_the_kv_cache(exported):
    root, artifact, _ = exported("llama", {}, "fp32")
    runner = open_runner(root, artifact)
    runner.forward(list(range(5, 5 + MAX_SEQ_LEN - 1)))
    with pytest.raises(ParityError, match="do not fit the program's 64-position KV cache"):
        runner.forward([5, 6])


def test_export_rejects_a_too_short_context(tiny_checkpoint, tmp_path):
    checkpoint = resolve(tiny_checkpoint("llama"))
    request = ExportRequest(checkpoint, load_recipe("fp32"), 2, tmp_path / "executorch")
    with pytest.raises(ExportError, match="ExecuTorch needs --max-seq-len 3 or more, got 2"):
        get_exporter("executorch").export(checkpoint.load_model(), request)


# --- quantize_model: the recipe's translation ---------------------------------------------------------------


def _recipe(**fields) -> Recipe:
    return Recipe.model_validate({"name": "test", **fields})


def _weight(module):
    """(bits, group size or None for per channel, activation quantization) of a quantized module's weight."""
    w = module.weight
    if type(w).__name__ != "IntxUnpackedToInt8Tensor":
        return None
    bits = int(str(w.target_dtype).removeprefix("torch.int"))
    group = w.block_size[-1] if w.block_size[-1] != w.shape[-1] else None
    return bits, group, w.activation_quantization is not None


@pytest.fixture
def bf16_llama(tiny_checkpoint):
    """The tiny Llama as a checkpoint in bf16 would arrive: tied embeddings, bf16 weights."""
    return resolve(tiny_checkpoint("llama")).load_model("bfloat16")


INT4 = {"bits": 4, "group_size": 32, "activations": "int8_dynamic"}
INT8 = {"bits": 8}


def test_precedence_embedding_section_beats_rules(bf16_llama):
    quantize_model(bf16_llama, _recipe(rules=[{"match": "*", "weights": INT4}], embedding=INT8))
    assert _weight(bf16_llama.model.embed_tokens) == (8, None, False)
    assert _weight(bf16_llama.model.layers[0].mlp.up_proj) == (4, 32, True)


def test_precedence_lm_head_section_beats_rules(bf16_llama):
    quantize_model(bf16_llama, _recipe(rules=[{"match": "*", "weights": INT4}], lm_head=INT8))
    # weight-only lm_head becomes int8 dynamic activations (XNNPACK), per channel as asked
    assert _weight(bf16_llama.lm_head) == (8, None, True)
    assert _weight(bf16_llama.model.embed_tokens) is None


def test_precedence_first_matching_rule_wins(bf16_llama):
    rules = [
        {"match": "model.layers.*.mlp.*", "weights": INT8},
        {"match": "model.layers.1.*", "weights": INT4},
        {"match": "*", "weights": {"bits": 4, "group_size": 16, "activations": "int8_dynamic"}},
    ]
    quantize_model(bf16_llama, _recipe(rules=rules))
    assert _weight(bf16_llama.model.layers[1].mlp.down_proj) == (8, None, True)  # first rule, not the second
    assert _weight(bf16_llama.model.layers[1].self_attn.q_proj) == (4, 32, True)
    assert _weight(bf16_llama.model.layers[0].self_attn.q_proj) == (4, 16, True)


def test_unmatched_layers_stay_float_in_the_recipe_dtype(bf16_llama):
    quantize_model(bf16_llama, _recipe(rules=[{"match": "*.mlp.*", "weights": INT4}]))
    assert _weight(bf16_llama.model.layers[0].self_attn.o_proj) is None
    assert bf16_llama.model.layers[0].self_attn.o_proj.weight.dtype == torch.float32
    assert _weight(bf16_llama.model.layers[0].mlp.gate_proj) == (4, 32, True)
    plain = [p for p in bf16_llama.parameters() if type(p.data) is torch.Tensor]
    assert plain and all(p.dtype == torch.float32 for p in plain)  # nothing left in bf16


def test_tied_embeddings_are_untied_only_when_quantized(tiny_checkpoint):
    model = resolve(tiny_checkpoint("llama")).load_model("bfloat16")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    quantize_model(model, load_recipe("fp32"))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one tensor in the .pte
    assert model.lm_head.weight.dtype == torch.float32

    model = resolve(tiny_checkpoint("llama")).load_model("bfloat16")
    quantize_model(model, _recipe(embedding={"bits": 4, "group_size": 32}))
    assert _weight(model.model.embed_tokens) == (4, 32, False)
    assert _weight(model.lm_head) is None and model.lm_head.weight.dtype == torch.float32


def test_fp16_recipe_casts_everything(bf16_llama):
    assert quantize_model(bf16_llama, load_recipe("fp16")) == []
    assert {p.dtype for p in bf16_llama.parameters()} == {torch.float16}


def test_quantized_model_runs_eagerly_close_to_fp32(tiny_checkpoint):
    checkpoint = resolve(tiny_checkpoint("qwen3"))
    reference, model = checkpoint.load_model("float32"), checkpoint.load_model("bfloat16")
    quantize_model(model, load_recipe("int8-weight"))
    tokens = torch.tensor([_prompt(320)])
    with torch.no_grad():
        got, want = model(tokens).logits, reference(tokens).logits
    assert got.dtype == torch.float32
    assert _cosine(got.numpy(), want.numpy()) > 0.999


def test_unhonoured_rules_name_the_rule_and_what_is_done_instead(bf16_llama):
    recipe = _recipe(
        rules=[
            {"match": "*.mlp.*", "weights": {"bits": 4, "group_size": 128, "activations": "int8_dynamic"}},
            {"match": "*", "weights": {"bits": 4, "group_size": 32, "format": "palette", "symmetric": False,
                                       "activations": "int8_dynamic"}},
        ],
        embedding={"bits": 8, "activations": "int8_dynamic"},
        lm_head={"bits": 16},
    )
    lines = quantize_model(bf16_llama, recipe)
    assert lines[:3] == unhonoured(recipe)
    text = "\n".join(lines)
    assert "embedding (int8 per-channel sym+int8 dyn act): activation quantization does not apply" in text
    assert "lm_head (fp16): one float dtype per model; kept at the recipe dtype float32" in text
    assert "rule '*' (int4 g32 palette+int8 dyn act): palettized weights are not supported" in text
    assert "symmetric" not in text  # zero points are honoured (ZeroPointLinear)
    # hidden 64 is not a multiple of 128: those layers fall back to per channel, and say which ones
    assert "group size 128 does not divide the input size 64; quantized per channel (model.layers.0.mlp.gate_proj" in text
    assert _weight(bf16_llama.model.layers[0].mlp.gate_proj) == (4, None, True)
    assert "down_proj" not in text  # its input is 128 wide: one group of 128 per row, as asked


def test_shipped_recipes_translate_without_model_specific_surprises():
    assert unhonoured(load_recipe("fp32")) == unhonoured(load_recipe("fp16")) == []
    # The int4 recipes ask for int8 activations on their int8 lm_head, so XNNPACK honours that as written; their
    # asymmetric int4 codes keep their zero points (ZeroPointLinear).
    for name in ("int4-block32", "int4-block32-rtn", "int4-block128", "int4-mixed"):
        assert unhonoured(load_recipe(name)) == []
    expected = (
        "{} (int8 per-channel sym): XNNPACK mis-lowers weight-only linear layers; given int8 dynamic activations instead"
    )
    assert unhonoured(load_recipe("int8-weight")) == [expected.format("lm_head"), expected.format("rule '*'")]


# --- real weights --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_int4_pte_answers_paris_in_the_llm_runner(smollm2_int4):
    """SmolLM2-135M-Instruct, int4-block32, run by ExecuTorch's own LLM runner with the bundled tokenizer."""
    import executorch.kernels.quantized  # noqa: F401 - the runner needs the quantized embedding kernels registered
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edgepack.tokenizer import DeviceTokenizer

    record = json.loads((smollm2_int4 / "export.json").read_text())
    pte = smollm2_int4 / "executorch" / "model.pte"
    bytes_per_param = pte.stat().st_size / record["checkpoint"]["num_parameters"]
    assert bytes_per_param < 1.2, f"{bytes_per_param:.2f} bytes per parameter"

    tokenizer = DeviceTokenizer(smollm2_int4 / "tokenizer")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    pieces: list[str] = []
    runner = TextLLMRunner(str(pte), str(smollm2_int4 / "tokenizer" / "tokenizer.json"))
    runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=24, temperature=0.0), pieces.append)
    answer = "".join(pieces)
    print(f"\nExecuTorch LLM runner: {answer!r}; {bytes_per_param:.3f} bytes/parameter")
    assert "Paris" in answer, answer


def test_a_long_stage_says_it_is_still_running():
    """XNNPACK's lowering is minutes of silence at 4B: a heartbeat line with the elapsed time and the estimate."""
    import time

    from edgepack.backends import heartbeat

    said: list[str] = []
    with heartbeat(said.append, "lowering to XNNPACK", 420, every=0.05):
        time.sleep(0.18)
    assert len(said) >= 2 and said[0].startswith("lowering to XNNPACK: still running, 0 s elapsed of ~420 s")
    count = len(said)
    time.sleep(0.1)
    assert len(said) == count  # stopped with the block


def test_lowering_estimate_follows_the_codes():
    """The heartbeat's estimate: asymmetric codes add a correction linear per linear, which lowering pays per node
    (measured 32 s per layer against 14 on 2 cores), so the calibrated recipe is told apart from fp32."""
    from transformers import LlamaConfig

    from edgepack.backends.executorch.exporter import _lowering_estimate

    config = LlamaConfig(num_hidden_layers=30)
    assert _lowering_estimate(config, load_recipe("int4-block32")) == 30 * 32.0
    assert _lowering_estimate(config, load_recipe("fp32")) == 30 * 14.0
