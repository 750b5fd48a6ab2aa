"""Memory estimates and plans, checked against arithmetic done by hand here (not by edgepack's code)."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner
from safetensors import safe_open

from edgepack.cli import main
from edgepack.devices import GIB, load_device
from edgepack.facts import ModelFacts as Geometry
from edgepack.memory import MIB, weight_bytes
from edgepack.plan import devices_section, plan, plan_export
from edgepack.recipes import load_recipe

# A Llama of about 5.6B parameters with a small vocabulary: int8 is too big for an 8 GB Android phone, int4 is not.
LARGE = {
    "model_type": "llama",
    "num_hidden_layers": 28,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
# SmolLM2-135M's config.
SMALL = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
SMALL_PARAMS = 134_515_008
PHONES = ["iphone-15-pro", "iphone-13", "galaxy-s24", "pixel-8-pro", "android-midrange-6gb"]


def reference_int4_block128_bytes(cfg) -> int:
    """As the .pte stores it: int4 linear layers with an fp32 scale and an fp32 zero-point correction per 128
    weights (ZeroPointLinear), int8 per-row embedding and lm_head, fp32 norms."""
    h, kv = (
        cfg["hidden_size"],
        cfg["num_key_value_heads"] * (cfg["hidden_size"] // cfg["num_attention_heads"]),
    )
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * cfg["intermediate_size"]
    linear = cfg["num_hidden_layers"] * per_layer
    table = cfg["vocab_size"] * h + cfg["vocab_size"] * 4  # int8 values + one fp32 scale per row
    norms = (2 * cfg["num_hidden_layers"] + 1) * h * 4
    return linear // 2 + 2 * (linear // 128 * 4) + 2 * table + norms


def reference_max_context(cfg, weights: int, budget: int) -> int:
    """executorch: fp32 K and V for every layer at every position; 40 MiB runtime; fp32 activations of a
    128-token prefill chunk (logits, 2 hidden, MLP, one layer's scores over the context)."""
    kv_per_token = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * 128 * 4
    fixed = (
        weights + 40 * MIB + 4 * 128 * (cfg["vocab_size"] + 2 * cfg["hidden_size"] + cfg["intermediate_size"])
    )
    per_token = kv_per_token + 4 * 128 * cfg["num_attention_heads"]
    return (budget - fixed) // per_token


def test_kv_cache_is_layers_kv_heads_head_dim_two_bytes_context_and_window_aware():
    cfg = {
        "num_hidden_layers": 4,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 320,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
    }
    geom = Geometry.from_config(cfg)
    assert geom.kv_cache(100, 4, window_aware=False) == 4 * 2 * 16 * 2 * 4 * 100
    assert geom.kv_cache(100, 4, window_aware=True) == 2 * 16 * 2 * 4 * (8 + 100 + 8 + 100)
    assert geom.kv_cache(5, 2, window_aware=True) == 4 * 2 * 16 * 2 * 2 * 5  # shorter than the window
    # Qwen2-style configs carry a window they do not use; Mistral-style ones window every layer.
    assert (
        Geometry.from_config({**cfg, "layer_types": None, "use_sliding_window": False}).windows == (None,) * 4
    )
    assert Geometry.from_config({**cfg, "layer_types": None}).windows == (8,) * 4
    # Gemma 3 multimodal configs nest the language model's settings.
    assert Geometry.from_config({"text_config": cfg}).windows == (8, None, 8, None)


def test_weight_estimate_matches_the_tensors_of_a_real_checkpoint(tiny_checkpoint):
    """int4-block32 over the real tensor shapes in a tiny Llama's safetensors file, counted here by hand."""
    folder = tiny_checkpoint("llama")
    config = json.loads((folder / "config.json").read_text())
    expected = total = 0
    with safe_open(folder / "model.safetensors", "np") as f:
        for name in f.keys():  # noqa: SIM118 - a safetensors handle is not a dict
            shape = f.get_slice(name).get_shape()
            n = math.prod(shape)
            total += n
            if name.endswith("embed_tokens.weight"):  # tied: a quantized gather table and a quantized lm_head
                expected += 2 * (n + shape[0] * 4)
            elif len(shape) == 2:  # int4 codes, an fp32 scale and a uint4 zero point per group of 32
                expected += n // 2 + n // 32 * 4 + n // 32 // 2
            else:
                expected += n * 4
    assert weight_bytes(Geometry.from_config(config), load_recipe("int4-block32"), total).total == expected


def test_large_model_fits_the_8gb_android_phone_only_at_int4_and_not_the_4gb_iphone():
    large = {p.device: p for p in plan(LARGE, PHONES)}
    s24 = large["galaxy-s24"]
    assert (s24.target, s24.recipe) == ("executorch", "int4-block128")
    weights = reference_int4_block128_bytes(LARGE)
    assert s24.estimate.weights == weights
    assert s24.max_context == reference_max_context(LARGE, weights, int(3.5 * GIB))
    assert large["iphone-13"].cloud_only and large["iphone-13"].max_context == 0
    assert "cloud only" in large["iphone-13"].reason and "2.00 GiB" in large["iphone-13"].reason
    assert large["android-midrange-6gb"].cloud_only
    # The 8 GB iPhone fits it only with the increased-memory-limit entitlement, and says so.
    assert "increased-memory-limit" in large["iphone-15-pro"].extended
    assert not large["pixel-8-pro"].cloud_only


def test_small_model_fits_every_device_at_int8_with_the_whole_context():
    small = plan(SMALL, "all", num_parameters=SMALL_PARAMS)
    assert len(small) == 6
    for p in small:
        assert p.recipe == "int8-weight" and p.max_context == 8192 and p.extended is None, p
    targets = {p.device: p.target for p in small}
    assert targets["iphone-15-pro"] == "coreml"  # iOS 18: stateful Core ML, the preferred runtime
    assert targets["iphone-13"] == "mlx"  # an app supporting iOS 17 cannot use Core ML; mlx-swift needs 17
    assert targets["raspberry-pi-5"] == "executorch"


def test_recipe_order_is_the_preference_and_targets_can_be_restricted():
    p = plan(SMALL, ["galaxy-s24"], ["fp16", "int4-block32"], num_parameters=SMALL_PARAMS)[0]
    assert p.recipe == "fp16"
    p = plan(SMALL, ["iphone-15-pro"], ["int8-weight"], targets=["onnx"], num_parameters=SMALL_PARAMS)[0]
    assert p.target == "onnx"
    p = plan(SMALL, ["raspberry-pi-5"], targets=["coreml"], num_parameters=SMALL_PARAMS)[0]
    assert p.cloud_only and "no candidate target (coreml) runs" in p.reason


def test_devices_section_has_the_manifest_shape():
    plans = plan(LARGE, ["galaxy-s24", "iphone-13"])
    s24, iphone = load_device("galaxy-s24").match(), load_device("iphone-13").match()
    assert devices_section(plans) == [
        {"device": "galaxy-s24", "artifact": "executorch", "cloud_only": False, "reason": plans[0].reason,
         "max_context": plans[0].max_context, "match": s24},
        {"device": "iphone-13", "artifact": None, "cloud_only": True, "reason": plans[1].reason, "max_context": None,
         "match": iphone},
    ]  # fmt: skip
    assert s24 == {"platform": "android", "min_os_version": "14", "min_ram_bytes": int(8 * 0.85 * GIB), "machine_ids": []}


def test_plan_of_an_export_folder_uses_the_artifact_bytes_and_its_max_seq_len(tmp_path):
    out = tmp_path / "export"
    (out / "onnx").mkdir(parents=True)
    (out / "onnx" / "model.onnx").write_bytes(b"\0" * 3_000_000)
    (out / "onnx" / "genai_config.json").write_text("{}")
    record = {"checkpoint": {"num_layers": 30, "num_attention_heads": 9, "num_kv_heads": 3, "head_dim": 64, "hidden_size": 576,
                             "vocab_size": 49152, "context_length": 8192, "tie_word_embeddings": True},
              "recipe": {"name": "int4-block32", "dtype": "float32"}}  # fmt: skip
    (out / "export.json").write_text(json.dumps(record))
    artifact = {"target": "onnx", "runtime": "onnxruntime", "path": "onnx/model.onnx",
                "files": ["onnx/model.onnx", "onnx/genai_config.json"], "recipe": "int4-block32", "weight_bits": 4,
                "max_seq_len": 512, "min_runtime": "onnxruntime 1.20"}  # fmt: skip
    (out / "onnx" / "artifact.json").write_text(json.dumps(artifact))
    [p] = plan_export(out, [load_device("iphone-13")])
    assert (p.artifact, p.max_context) == ("onnx/model.onnx", 512)
    kv = 30 * 2 * 3 * 64 * 4 * 512
    overhead = 160 * MIB + 4 * 128 * (49152 + 2 * 576 + 4 * 576 + 9 * 512)  # no intermediate_size: 4 x hidden
    assert p.estimate.as_dict() == {"weights": 3_000_000, "kv_cache": kv, "overhead": overhead,
                                    "total": 3_000_000 + kv + overhead, "context": 512}  # fmt: skip
    assert devices_section([p])[0]["artifact"] == "onnx/model.onnx"


def test_cli_plans_a_checkpoint_folder_and_a_bare_config(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main, ["plan", str(tiny_checkpoint("llama")), "--devices", "iphone-13,galaxy-s24", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["device"], r["recipe"], r["max_context"]) for r in rows] == [
        ("iphone-13", "int8-weight", 256),
        ("galaxy-s24", "int8-weight", 256),
    ]  # the tiny model's whole context
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LARGE))
    text = runner.invoke(main, ["plan", str(config), "--devices", "iphone-13,galaxy-s24"])
    assert text.exit_code == 0
    assert "galaxy-s24             executorch / int4-block128" in text.output
    assert "iphone-13              cloud only" in text.output
    bad = runner.invoke(main, ["plan", str(config), "--devices", "nokia-3310"])
    assert bad.exit_code == 2 and "unknown device" in bad.output
