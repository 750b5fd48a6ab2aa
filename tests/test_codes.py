"""Integer codes computed once (``edgepack.codes``): GPTQ against round-to-nearest, the code book and its cache,
every backend holding exactly the book's codes (read back from the artifact), calibration input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.codes import codes_for, rtn
from edgepack.codes.gptq import gptq, output_error
from edgepack.paths import DATA_DIR
from edgepack.recipes import Recipe, load_recipe

TINY_GPTQ = """\
name: tiny-gptq
dtype: float32
rules:
  - match: "*"
    weights: {bits: 4, group_size: 32, symmetric: false, activations: int8_dynamic}
embedding: {bits: 8, group_size: null, symmetric: true}
lm_head: {bits: 8, group_size: null, symmetric: true, activations: int8_dynamic}
method: {name: gptq, samples: 8, seq_len: 64, clip_search: true}
"""


def tiny_recipe(tmp_path: Path, text: str = TINY_GPTQ) -> Path:
    path = tmp_path / "tiny-gptq.yaml"
    path.write_text(text)
    return path


def correlated_inputs(n: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Activations shaped like an LLM's: low-rank correlated, with a few channels far larger than the rest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g) @ torch.randn(8, cols, generator=g) + 0.3 * torch.randn(n, cols, generator=g)
    return x * torch.linspace(0.2, 3.0, cols)[torch.randperm(cols, generator=g)]


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lowers_the_layer_output_error_against_round_to_nearest(symmetric):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(96, 128, generator=g) * 0.05
    x = correlated_inputs(1024, 128)
    hessian = 2 * x.T @ x / x.shape[0]
    plain = output_error(weight, rtn(weight, 4, 32, symmetric).dequantize(), hessian)
    codes, damping = gptq(weight, hessian, 4, 32, symmetric, clip_search=False)
    calibrated = output_error(weight, codes.dequantize(), hessian)
    print(f"symmetric={symmetric}: output error rtn {plain:.4g}, gptq {calibrated:.4g}")
    assert calibrated < 0.6 * plain and damping == 0.01
    lo, hi = (-8, 7) if symmetric else (0, 15)
    assert codes.q.min() >= lo and codes.q.max() <= hi and codes.q.dtype == (torch.int8 if symmetric else torch.uint8)


def test_clip_search_never_rounds_worse_than_plain_round_to_nearest():
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    weight[0, 5] = 12.0  # an outlier that a max-abs scale lets dominate its group
    for symmetric in (True, False):
        plain = (rtn(weight, 4, 32, symmetric).dequantize() - weight).pow(2).sum(-1)
        clipped = (rtn(weight, 4, 32, symmetric, clip_search=True).dequantize() - weight).pow(2).sum(-1)
        assert bool((clipped <= plain + 1e-6).all()) and clipped.sum() < plain.sum()


def test_codes_define_one_grid_per_group():
    """Asymmetric groups always hold 0 (integer zero points in range); per-channel codes span the row."""
    weight = torch.rand(8, 96) + 0.5  # all positive: the range must still reach down to 0
    codes = rtn(weight, 4, 32, False)
    assert codes.group == 32 and codes.zero.shape == (8, 3) and int(codes.zero.max()) == 0
    assert rtn(weight, 4, 64, True).group == 96  # 64 does not divide 96: per channel, as the backends say
    assert torch.allclose(rtn(weight, 8, None, True).dequantize(), weight, atol=weight.abs().max() / 250)


def test_gptq_on_a_tiny_model_beats_round_to_nearest_end_to_end(tiny_checkpoint, tmp_path, monkeypatch):
    """GPTQ over the built-in calibration text, layer by layer, then the whole model on held-out text: its logits
    are closer to the fp32 model's than round-to-nearest's."""
    from edgepack.checkpoint import resolve
    from edgepack.tokenizer import DeviceTokenizer
    from edgepack.weights import load_layer_streamed

    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    checkpoint = resolve(tiny_checkpoint("llama"))
    tokenizer = DeviceTokenizer(checkpoint.path)
    calibrated = load_recipe(tiny_recipe(tmp_path))
    plain = calibrated.model_copy(update={"method": calibrated.method.model_copy(update={"name": "rtn"})})
    plain = Recipe.model_validate(plain.model_dump() | {"method": {"name": "rtn", "clip_search": True}})
    held_out = (DATA_DIR / "text" / "eval-prose.txt").read_text()  # not part of the calibration set
    ids = torch.tensor([tokenizer.encode(held_out)[:64]])
    with torch.no_grad():
        want = load_layer_streamed(checkpoint)(ids).logits
        errors = {}
        for recipe in (plain, calibrated):
            book = codes_for(checkpoint, recipe, tokenizer=tokenizer)
            got = load_layer_streamed(checkpoint, transform=book.transform(recipe))(ids).logits
            errors[recipe.method.name] = float((got - want).pow(2).mean())
    print(f"tiny llama logits MSE vs fp32: {errors}")
    assert errors["gptq"] < 0.5 * errors["rtn"]
    assert book.meta["calibration"]["windows"] == [8, 64] and len(book.meta["layer_seconds"]) == 2


def test_code_book_is_cached_by_weights_recipe_and_calibration(tiny_checkpoint, tmp_path, monkeypatch):
    from edgepack.checkpoint import resolve
    from edgepack.codes.calibration import load_calibration
    from edgepack.tokenizer import DeviceTokenizer

    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    checkpoint = resolve(tiny_checkpoint("llama"))
    tokenizer = DeviceTokenizer(checkpoint.path)
    recipe = load_recipe(tiny_recipe(tmp_path))
    said = []
    first = codes_for(checkpoint, recipe, tokenizer=tokenizer, say=said.append)
    assert any("GPTQ over 8 x 64" in s for s in said)
    said.clear()
    again = codes_for(checkpoint, recipe, tokenizer=tokenizer, say=said.append)
    assert again.key == first.key and any("from the cache" in s for s in said)
    other_text = tmp_path / "other.txt"
    other_text.write_text(" ".join(["edge devices run small language models"] * 40))
    other = codes_for(checkpoint, recipe, tokenizer=tokenizer, calibration=load_calibration(other_text))
    assert other.key != first.key
    relaxed = Recipe.model_validate(recipe.model_dump() | {"parity": {"max_kl": 0.5}, "name": "renamed"})
    assert codes_for(checkpoint, relaxed, tokenizer=tokenizer).key == first.key  # thresholds do not touch codes
    assert not list((tmp_path / "cache" / "codes").glob(".*tmp*"))  # nothing half-written left behind


def test_codes_read_from_the_book_own_their_memory(gptq_export):
    """A backend keeps a weight's scales to the end of its export; were they views of the shard's memory map, each
    would keep every page of the shard read so far resident (a 4B export held its 3.9 GB book that way)."""
    codes = books(gptq_export)[0]["zero_points"].get("model.layers.0.mlp.up_proj")
    for tensor in (codes.q, codes.scale, codes.zero):
        assert tensor.untyped_storage().resizable(), "a view of the book's memory-mapped file"


@pytest.mark.parametrize(("symmetric", "group", "bits"), [(True, 32, 4), (False, 32, 4), (True, None, 8), (False, 16, 8)])
def test_matmul_nbits_computes_exactly_the_dequantized_codes(symmetric, group, bits):
    """edgepack's block layout run by onnxruntime's own MatMulNBits equals ``Codes.dequantize()``: zero points,
    implicit offsets, per-channel scales repeated over blocks and padded K included."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.backends.onnx.exporter import NBits, _block
    from edgepack.backends.onnx.weights import _pack_rows, _pack_zero_points, in_blocks

    n, k = 24, 96
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(3))
    codes = rtn(weight, bits, group, symmetric)
    block = _block(NBits(bits, group, symmetric, None), k)
    q, scales, zeros = in_blocks(codes, block, unsigned=False)
    inits = [numpy_helper.from_array(_pack_rows(q, bits, block), "B"), numpy_helper.from_array(scales.reshape(-1), "S")]
    inputs = ["A", "B", "S"]
    if zeros is not None:
        inits.append(numpy_helper.from_array(_pack_zero_points(zeros, bits), "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block)  # fmt: skip
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [k, n])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"A": np.eye(k, dtype=np.float32)})
    np.testing.assert_allclose(got.T, codes.dequantize().numpy(), rtol=1e-6, atol=1e-6)
    assert onnx.checker.check_model(model) is None


# --- one export, every backend -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gptq_export(tiny_checkpoint, tmp_path_factory):
    """A tiny llama exported to every target with an asymmetric GPTQ recipe by the real pipeline."""
    import os

    from edgepack.pipeline import export

    root = tmp_path_factory.mktemp("gptq-export")
    old = os.environ.get("EDGEPACK_CACHE")
    os.environ["EDGEPACK_CACHE"] = str(root / "cache")
    try:
        result = export(tiny_checkpoint("llama"), out=root / "out", recipe=tiny_recipe(root), max_seq_len=32)
    finally:
        if old is None:
            del os.environ["EDGEPACK_CACHE"]
        else:
            os.environ["EDGEPACK_CACHE"] = old
    return result


def books(result):
    from edgepack.codes import CodeBook

    record = json.loads((result.out / "export.json").read_text())
    return {kind: CodeBook(Path(entry["path"])) for kind, entry in record["codes"].items()}, record


def test_no_build_path_reaches_the_manifest_or_a_bundle(gptq_export, tmp_path):
    """Every file an app receives (each platform's bundle: manifest, artifacts, tokenizer) is free of the paths
    of the machine that built it; the model is named by its folder's name."""
    from edgepack.bundle import write_bundle

    record = json.loads((gptq_export.out / "export.json").read_text())
    built_at = {str(gptq_export.out.parent), record["checkpoint"]["path"], str(Path(record["checkpoint"]["path"]).parent)}
    manifest = json.loads((gptq_export.out / "manifest.json").read_text())
    assert manifest["model"]["id"] == manifest["model"]["source"]["source"] == Path(record["checkpoint"]["path"]).name
    write_bundle(gptq_export.out, tmp_path / "bundles", "all")
    leaks = [(f, p) for f in sorted((tmp_path / "bundles").rglob("*")) if f.is_file()
             for p in built_at if p.encode() in f.read_bytes()]  # fmt: skip
    assert not leaks, leaks


def test_every_backend_packs_the_one_book(gptq_export):
    """XNNPACK's kernels have no zero points, yet the .pte gets the recipe's own codes (ZeroPointLinear): one code
    book, one calibration, for every target."""
    found, record = books(gptq_export)
    assert set(found) == {"zero_points"} and not found["zero_points"].meta["symmetric_only"]
    assert record["codes"]["zero_points"]["method"].startswith("gptq (8x64 tokens")
    assert record["codes"]["zero_points"]["calibration"]["source"] == "builtin"
    keys = {a.target: a.details["codes"] for a in gptq_export.artifacts}
    assert keys == dict.fromkeys(("onnx", "coreml", "executorch", "mlx", "gguf"), found["zero_points"].key)
    assert gptq_export.parity.passed
    split = {a.target: a.split for a in gptq_export.parity.artifacts}
    # the split's quantization half is the book's codes, the same eager model for every target
    assert len({round(s["quantization"]["kl"], 9) for s in split.values()}) == 1
    assert split["onnx"]["quantization"]["kl"] > 0


def test_onnx_holds_exactly_the_books_codes(gptq_export):
    import onnx
    from onnx import numpy_helper

    from edgepack.backends.onnx.exporter import module_of
    from edgepack.backends.onnx.weights import in_blocks

    book = books(gptq_export)[0]["zero_points"]
    proto = onnx.load(gptq_export.out / "onnx" / "model.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    checked = 0
    for node in (n for n in proto.graph.node if n.op_type == "MatMulNBits"):
        attrs = {a.name: a.i for a in node.attribute}
        n, bits, block = attrs["N"], attrs["bits"], attrs["block_size"]
        packed = inits[node.input[1]]
        file_q = np.stack([packed & 0xF, packed >> 4], -1).reshape(n, -1) if bits == 4 else packed.reshape(n, -1)
        want_q, want_s, want_z = in_blocks(book.get(module_of(node)), block, unsigned=False)
        assert np.array_equal(file_q, want_q) and np.array_equal(inits[node.input[2]].reshape(n, -1), want_s)
        if want_z is not None:
            z = inits[node.input[3]]
            z = np.stack([z & 0xF, z >> 4], -1).reshape(n, -1)[:, : want_z.shape[1]] if bits == 4 else z.reshape(n, -1)
            assert np.array_equal(z, want_z)
        checked += 1
    assert checked == 2 * 7 + 1  # every linear of both layers and the lm_head


def test_coreml_holds_exactly_the_books_codes(gptq_export):
    from coremltools.converters.mil.mil import types

    from edgepack.backends.coreml.mil2onnx import load_program

    book = books(gptq_export)[0]["zero_points"]
    program = load_program(gptq_export.out / "coreml" / "model.mlpackage")
    ops = {op.name: op for op in program.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"}
    # The tiny llama ties lm_head to the embedding: Core ML keeps one table, whose codes (int8 per row) are the
    # book's lm_head codes too.
    tied = book.get("lm_head")
    assert torch.equal(tied.q, book.get("model.embed_tokens").q)
    checked = 0
    for name in [n for n in book.tensors if n != "lm_head"]:
        op = ops[name.replace(".", "_") + "_weight_to_fp16_quantized"]
        codes = book.get(name)
        assert np.array_equal(op.data.val.astype(np.int16), codes.q.numpy().astype(np.int16))
        np.testing.assert_array_equal(op.scale.val, codes.scale.numpy().astype(np.float16))
        if codes.zero is None:
            assert op.offset is None
        else:
            assert types.builtin_to_string(op.data.dtype) == "uint4"
            assert np.array_equal(op.offset.val.astype(np.int16), codes.zero.numpy().astype(np.int16))
        checked += 1
    assert checked == len(book.tensors) - 1 == 2 * 7 + 1


def test_executorch_holds_exactly_the_books_codes(gptq_export, tiny_checkpoint):
    """What the exporter hands to torch.export: torchao tensors holding the book's codes shifted to the signed
    range, and each zero point in the correction, so the module computes exactly the codes' weight."""
    from edgepack.checkpoint import resolve
    from edgepack.backends import find_codes
    from edgepack.backends.executorch.model import ZeroPointLinear
    from edgepack.backends.executorch.quantize import quantize_model

    book = books(gptq_export)[0]["zero_points"]
    recipe = load_recipe(tiny_recipe(gptq_export.out.parent))
    model = resolve(tiny_checkpoint("llama")).load_model("float32")
    quantize_model(model, recipe, lambda name, w, q: find_codes(book, name, w, q))
    x = torch.randn(3, model.config.hidden_size * 4)
    checked = 0
    for name in book.tensors:
        module, codes = model.get_submodule(name), book.get(name)
        weight = module.weight
        if codes.zero is None:
            assert torch.equal(weight.qdata, codes.q) and torch.equal(weight.dequantize(), codes.dequantize())
            continue
        assert isinstance(module, ZeroPointLinear)
        assert torch.equal(weight.qdata.to(torch.int16), codes.q.to(torch.int16) - 8)
        assert torch.equal(weight.scale, codes.scale) and not weight.zero_point.any()
        assert torch.equal(module.correction, -(codes.zero.float() - 8) * codes.scale)
        # without activation quantization the module is the dequantized codes' linear, to float rounding
        inputs = x[:, : codes.q.shape[1]]
        want = inputs @ codes.dequantize().T
        sums = inputs.unflatten(-1, (-1, codes.group)).sum(-1)
        got = torch.nn.functional.linear(inputs, weight.dequantize()) + torch.nn.functional.linear(sums, module.correction)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked == 2 * 7  # every decoder linear (embedding and lm_head are symmetric int8)


# --- recipe and calibration input ---------------------------------------------------------------------------


def test_method_keys_are_validated(tmp_path):
    from edgepack.errors import RecipeError

    bad = tiny_recipe(tmp_path, TINY_GPTQ.replace("method: {name: gptq, samples: 8, seq_len: 64, clip_search: true}",
                                                  "method: {name: awq, samplez: 8, damping: 2}"))  # fmt: skip
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    msg = str(info.value)
    assert "method.name" in msg and "samplez: unknown key" in msg and "method.damping" in msg
    rtn_with_gptq_keys = tiny_recipe(tmp_path, TINY_GPTQ.replace("name: gptq", "name: rtn"))
    with pytest.raises(RecipeError, match="samples, seq_len apply only to method gptq"):
        load_recipe(rtn_with_gptq_keys)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".txt", "calibration file not found"),
        ("", ".txt", "calibration file holds no text"),
        ("a,b\n1,2\n", ".csv", "unknown calibration format '.csv'"),
        ('{"text": "fine"}\n{"prompt": "x"}\nnot json\n', ".jsonl", "line 2: expected"),
        ("too short", ".txt", "calibration text is"),
    ],
)
def test_calibration_file_errors_exit_2_with_one_line(tiny_checkpoint, tmp_path, monkeypatch, content, suffix, message):
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    calibration = tmp_path / f"calibration{suffix}"
    if content is not None:
        calibration.write_text(content)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint("llama")), "--recipe", str(tiny_recipe(tmp_path)),
                                       "--target", "onnx", "--out", str(out), "--calibration", str(calibration)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_calibration_is_refused_for_a_recipe_that_does_not_calibrate(tiny_checkpoint, tmp_path):
    calibration = tmp_path / "c.txt"
    calibration.write_text("text " * 100)
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint("llama")), "--recipe", "int4-block32-rtn",
                                       "--out", str(tmp_path / "o"), "--calibration", str(calibration)])  # fmt: skip
    assert result.exit_code == 2 and "--calibration applies to calibrated recipes" in result.output


# --- long text and method quality ---------------------------------------------------------------------------


def test_parity_over_a_long_text_reports_perplexity_and_gates_on_it(gptq_export):
    from edgepack.parity.harness import check_parity

    root = gptq_export.out
    report = check_parity(root, text="builtin", targets=["onnx", "coreml"], thresholds={"max_kl": 5.0})
    assert report.text["source"] == "builtin" and report.text["tokens"] > 1000 and report.text["windows"] > 30
    for artifact in report.artifacts:
        m = artifact.text["metrics"]
        assert m["ppl"] > 1 and m["ppl_reference"] > 1 and m["ppl_ratio"] == pytest.approx(m["ppl"] / m["ppl_reference"])
        assert 0 < m["kl"] < 1 and set(artifact.text["split"]) == {"quantization", "conversion"}
    assert "## Long text" in (root / "parity.md").read_text()
    assert "::text::kl" in (root / "parity.junit.xml").read_text()
    strict = check_parity(root, text="builtin", targets=["onnx"], thresholds={"max_kl": 1e-9}, write_reports=False)
    assert {f.get("on", "prompts") for f in strict.artifacts[0].failures if f["metric"] == "kl"} == {"prompts", "text"}
    assert "kl on the text" in strict.failure_message(root)


def test_parity_text_errors_exit_2_with_one_line(gptq_export, tmp_path):
    missing = CliRunner().invoke(main, ["parity", str(gptq_export.out), "--text", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "text file not found" in missing.output and "Traceback" not in missing.output
    short = tmp_path / "short.txt"
    short.write_text("hi")
    result = CliRunner().invoke(main, ["parity", str(gptq_export.out), "--text", str(short)])
    assert result.exit_code == 2 and "at least 16 are needed" in result.output


def test_quality_command_compares_methods_on_a_noisy_reference(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["quality", str(tiny_checkpoint("llama")), "-r", str(tiny_recipe(tmp_path)),
                                       "-r", "int4-block32-rtn", "--noise", "0.1", "--max-len", "64", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    names = [r["name"] for r in data["rows"]]
    assert names == ["tiny-gptq", "int4-block32-rtn"]
    for row in data["rows"]:
        assert 0 <= row["metrics"]["top1"] <= 1 and row["metrics"]["kl"] > 0 and row["metrics"]["ppl_ratio"] > 0
    rows = {r["name"]: r["metrics"] for r in data["rows"]}
    assert rows["tiny-gptq"]["kl"] < rows["int4-block32-rtn"]["kl"]
    noisy = list((tmp_path / "cache" / "noisy").iterdir())
    assert len(noisy) == 1 and (noisy[0] / "model.safetensors").is_file()


@pytest.mark.slow
def test_smollm2_calibrated_int4_keeps_the_model_over_a_long_text(smollm2_int4):
    """Real weights, every target: SmolLM2 int4-block32 (GPTQ) over the built-in ~1,860-token text. Measured at
    max_seq_len 512 (README): KL 0.084 / 0.079 / 0.127 and top-1 0.820 / 0.827 / 0.771 for ONNX / Core ML /
    .pte; round-to-nearest symmetric codes measured KL ~0.44 on such text."""
    from edgepack.parity.harness import check_parity

    # MLX holds the book's codes exactly (conversion KL ~1e-10, README): its text figures are the quantization
    # half's, and MLX's x86 CPU backend would add ~5 minutes here.
    report = check_parity(smollm2_int4, targets=["onnx", "coreml", "executorch"], text="builtin", write_reports=False)
    text = {a.target: a.text["metrics"] for a in report.artifacts}
    print({t: {k: round(m[k], 3) for k in ("kl", "top1", "ppl_ratio")} for t, m in text.items()})
    for target in ("onnx", "coreml"):
        assert text[target]["kl"] <= 0.12 and text[target]["top1"] >= 0.78 and text[target]["ppl_ratio"] < 1.15
    assert text["executorch"]["kl"] <= 0.18 and text["executorch"]["top1"] >= 0.72
    assert report.passed


def test_parity_recomputes_an_evicted_code_book_and_checks_its_key(gptq_export, monkeypatch):
    import shutil

    from edgepack.parity.harness import check_parity

    found, record = books(gptq_export)
    folder = found["zero_points"].folder
    monkeypatch.setenv("EDGEPACK_CACHE", str(folder.parents[1]))  # where the fixture's export cached it
    shutil.rmtree(folder)
    report = check_parity(gptq_export.out, targets=["onnx"], write_reports=False)
    assert (folder / "index.json").is_file() and report.artifacts[0].split["conversion"]["kl"] < 0.05


def test_the_manifest_says_how_to_call_each_artifact_as_its_runtime_sees_it(gptq_export):
    """requires (runtime, minimum versions) and interface (names, dtypes, shapes, states, tokenizer file) per
    artifact, checked against the artifacts themselves: the ONNX graph's inputs/outputs and the Core ML program's."""
    import onnx

    from edgepack.backends.coreml.mil2onnx import load_program

    manifest = json.loads((gptq_export.out / "manifest.json").read_text())
    by_target = {a["target"]: a for a in manifest["artifacts"]}
    assert by_target["coreml"]["requires"] == {"runtime": "coreml", "runtime_version": None,
                                               "os": {"ios": "18.0", "macos": "15.0"}}  # fmt: skip
    assert by_target["executorch"]["requires"]["runtime_version"] == "1.5"
    graph = onnx.load(gptq_export.out / "onnx" / "model.onnx", load_external_data=False).graph
    onnx_io = by_target["onnx"]["interface"]
    assert [t["name"] for t in onnx_io["inputs"]] == [i.name for i in graph.input]
    assert [t["name"] for t in onnx_io["outputs"]] == [o.name for o in graph.output]
    assert (gptq_export.out / onnx_io["tokenizer"]).is_file()
    main_fn = load_program(gptq_export.out / "coreml" / "model.mlpackage").functions["main"]
    coreml_io = by_target["coreml"]["interface"]
    states = coreml_io["states"]
    assert {t["name"] for t in coreml_io["inputs"] + states} == set(main_fn.inputs)
    assert all(list(main_fn.inputs[s["name"]].shape) == s["shape"] for s in states)
    pte_io = by_target["executorch"]["interface"]
    assert [t["name"] for t in pte_io["inputs"]] == ["input_ids", "cache_position"]
    assert all((gptq_export.out / a["interface"]["tokenizer"]).is_file() for a in manifest["artifacts"])
