"""The manifest: built from a fabricated export folder, validated by the shipped schema, numbers checked by hand."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.cli._fallback import fallback_from_cli
from edgepack.errors import ConfigError, ManifestError
from edgepack.fallback import Auth, CloudModel, Fallback, load_fallback
from edgepack.manifest import build_manifest, read_manifest, schema, validate_manifest, write_manifest
from fake_export import METRICS, SMOLLM2, make_export

OAUTH = Auth(kind="user_oauth")


@pytest.fixture
def export(tmp_path):
    return make_export(tmp_path / "out")


def _by_target(manifest):
    return {a["target"]: a for a in manifest["artifacts"]}


def test_manifest_validates_and_records_every_artifact(export):
    path = write_manifest(export, Fallback(auth=OAUTH))
    manifest = json.loads(path.read_text())
    validate_manifest(manifest)
    assert read_manifest(export) == manifest
    arts = _by_target(manifest)
    assert sorted(arts) == ["coreml", "executorch", "onnx"]
    pte = export / "executorch/model.pte"
    assert arts["executorch"]["sha256"] == hashlib.sha256(pte.read_bytes()).hexdigest()
    assert arts["executorch"]["bytes"] == 6000
    # ONNX: model + external data + genai config + tokenizer copies, all listed with digests.
    assert {f["path"] for f in arts["onnx"]["files"]} == {
        "onnx/model.onnx", "onnx/model.onnx.data", "onnx/genai_config.json", "onnx/tokenizer.json",
        "onnx/tokenizer_config.json"}  # fmt: skip
    assert arts["onnx"]["min_runtime"] == "onnxruntime 1.20" and arts["coreml"]["min_runtime"] == "iOS 18"
    assert arts["onnx"]["parity"]["status"] == "passed" and arts["onnx"]["parity"]["metrics"] == METRICS
    assert manifest["model"]["id"] == SMOLLM2["model_id"] and manifest["model"]["license"] == "apache-2.0"
    tok = manifest["tokenizer"]
    assert (tok["bos_token_id"], tok["eos_token_ids"], tok["pad_token_id"]) == (1, [2, 4], 0)
    assert tok["chat_template"] == {"path": "tokenizer/chat_template.jinja", "source": "file"}
    assert manifest["generation"]["stop_token_ids"] == [2, 4]
    assert manifest["generation"]["sampling"] == {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


def test_mlpackage_folder_digest_is_deterministic_and_content_sensitive(export):
    first = _by_target(build_manifest(export))["coreml"]
    # The digest of a folder is the sha256 of its sorted "path\0sha256\n" lines (see the schema).
    lines = sorted((f["path"].removeprefix("coreml/model.mlpackage/"), f["sha256"]) for f in first["files"])
    expected = hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in lines).encode()).hexdigest()
    assert first["sha256"] == expected
    assert _by_target(build_manifest(export))["coreml"]["sha256"] == expected
    weight = export / "coreml/model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    weight.write_bytes(weight.read_bytes()[:-1] + b"\x00")
    assert _by_target(build_manifest(export))["coreml"]["sha256"] != expected


def test_kv_cache_and_peak_memory_by_hand(export):
    arts = _by_target(build_manifest(export))
    # 30 layers x 3 KV heads x 64 dims x (K and V) x bytes x 2048 tokens
    assert arts["executorch"]["kv_cache_bytes"] == 30 * 3 * 64 * 2 * 4 * 2048 == 94_371_840  # fp32 cache
    assert arts["coreml"]["kv_cache_bytes"] == 30 * 3 * 64 * 2 * 2 * 2048  # Core ML state is fp16
    ex = arts["executorch"]
    # overhead: ExecuTorch's 40 MiB base + fp32 activations of a 128-token prefill chunk (edgepack.memory):
    # logits (vocab) + 2 x hidden + MLP (4 x hidden when the record has no intermediate size) + scores (heads x ctx)
    overhead = 40 * 2**20 + 4 * 128 * (49152 + 2 * 576 + 4 * 576 + 9 * 2048)
    assert ex["memory"]["overhead_bytes"] == overhead
    assert ex["memory"]["weights_bytes"] == 6000  # the .pte; json and tokenizer files are not weights
    assert ex["peak_memory_bytes"] == 6000 + ex["kv_cache_bytes"] + overhead


def test_kv_cache_is_window_aware_for_ring_buffer_caches(tmp_path):
    # Gemma-style: every other layer slides over 512 tokens; 4 layers, 1 KV head of 256.
    shape = {"num_layers": 4, "num_kv_heads": 1, "head_dim": 256, "sliding_window": 512,
             "layer_types": ["sliding_attention", "full_attention"] * 2}  # fmt: skip
    ring = make_export(tmp_path / "ring", targets=("executorch",), checkpoint=shape,
                       details={"executorch": {"kv_cache_window_aware": True}})  # fmt: skip
    full = make_export(tmp_path / "full", targets=("executorch",), checkpoint=shape)
    per_token = 1 * 256 * 2 * 4
    assert _by_target(build_manifest(ring))["executorch"]["kv_cache_bytes"] == per_token * (
        2 * 512 + 2 * 2048
    )
    assert _by_target(build_manifest(full))["executorch"]["kv_cache_bytes"] == per_token * 4 * 2048


def test_parity_absent_is_recorded_as_not_run_and_failures_are_kept(tmp_path):
    no_parity = build_manifest(make_export(tmp_path / "a", parity=None))
    assert {a["parity"]["status"] for a in no_parity["artifacts"]} == {"not_run"}
    failed = _by_target(build_manifest(make_export(tmp_path / "b", parity="failed")))
    assert failed["onnx"]["parity"]["status"] == "failed"
    assert failed["onnx"]["parity"]["failures"] == [{"metric": "cosine", "value": 0.91, "threshold": 0.99}]
    assert failed["executorch"]["parity"]["status"] == "passed"


def test_every_export_carries_a_working_fallback_by_default(export, tmp_path):
    """No fallback flag: prefer the device, the router with OAuth, the checkpoint's hub id as the cloud model; a
    checkpoint with no hub id gets its family's default; --fallback-mode on_device_only opts out."""
    fb = build_manifest(export)["fallback"]
    assert fb["mode"] == "prefer_on_device" and fb["privacy"]["cloud_allowed"] and fb["auth"]["kind"] == "user_oauth"
    assert fb["endpoint"] == "https://router.huggingface.co/v1"
    assert fb["model"]["id_source"] == "checkpoint"
    assert fb["candidates"] == [{"model": "HuggingFaceTB/SmolLM2-135M-Instruct:fastest", "timeout_s": 20.0}]
    local = make_export(tmp_path / "local", checkpoint={"model_id": "my-model", "cloud_default": "acme/family-8b"})
    fb = build_manifest(local)["fallback"]
    assert fb["model"] == {**fb["model"], "id": "acme/family-8b", "id_source": "family_default", "twin": "larger"}
    assert fb["candidates"][0]["model"] == "acme/family-8b:fastest"
    nameless = build_manifest(make_export(tmp_path / "nameless", checkpoint={"model_id": "my-model"}))["fallback"]
    assert nameless["mode"] == "on_device_only" and nameless["candidates"] == []
    off = build_manifest(export, fallback_from_cli(fallback_mode="on_device_only"))["fallback"]
    assert off["mode"] == "on_device_only" and off["candidates"] == []


def test_every_family_names_a_cloud_default():
    from edgepack.architectures import families

    for spec in families():
        if spec.name != "tiny":
            assert spec.cloud_default and "/" in spec.cloud_default, spec.name


def test_fallback_candidates_follow_the_provider_policy(export):
    cheapest = Fallback(auth=OAUTH, model=CloudModel(policy="cheapest"))
    assert build_manifest(export, cheapest)["fallback"]["candidates"] == [
        {"model": "HuggingFaceTB/SmolLM2-135M-Instruct:cheapest", "timeout_s": 20.0}]  # fmt: skip
    ordered = Fallback(auth=OAUTH, attempt_timeout_s=15,
                       model=CloudModel(id="HuggingFaceTB/SmolLM3-3B", twin="larger",
                                        providers=[{"id": "groq", "timeout_s": 5}, "together"]))  # fmt: skip
    assert build_manifest(export, ordered)["fallback"]["candidates"] == [
        {"model": "HuggingFaceTB/SmolLM3-3B:groq", "timeout_s": 5.0},
        {"model": "HuggingFaceTB/SmolLM3-3B:together", "timeout_s": 15.0},
    ]


def test_devices_section_is_validated(export):
    devices = [{"device": "iphone-15", "artifact": "coreml/model.mlpackage", "cloud_only": False,
                "reason": "fits", "max_context": 2048},
               {"device": "watch", "artifact": None, "cloud_only": True, "reason": "too little memory",
                "max_context": None}]  # fmt: skip
    assert build_manifest(export, devices=devices)["devices"] == devices
    by_target = build_manifest(
        export, devices=[{**devices[0], "artifact": "coreml"}]
    )  # a plan made before export
    assert by_target["devices"][0]["artifact"] == "coreml/model.mlpackage"
    with pytest.raises(ManifestError, match="name artifacts not in this export"):
        build_manifest(export, devices=[{**devices[0], "artifact": "coreml/other.mlpackage"}])
    with pytest.raises(ManifestError, match="devices.0: 'cloud_only' is a required property"):
        build_manifest(export, devices=[{k: v for k, v in devices[0].items() if k != "cloud_only"}])


def test_schema_rejects_a_broken_manifest_listing_every_problem(export):
    manifest = build_manifest(export)
    manifest["artifacts"][0]["sha256"] = "xyz"
    manifest["fallback"]["mode"] = "sometimes"
    manifest["surprise"] = 1
    with pytest.raises(ManifestError) as err:
        validate_manifest(manifest)
    text = str(err.value)
    assert "artifacts.0.sha256: 'xyz' does not match" in text
    assert "fallback.mode: 'sometimes' is not one of" in text
    assert "Additional properties are not allowed ('surprise' was unexpected)" in text


@pytest.mark.parametrize("name", ["/home/me/models/smol", "~/models/smol", "C:\\models\\smol", "models\\smol"])
def test_schema_refuses_a_build_machine_path_as_the_model_name(export, name):
    manifest = build_manifest(export)
    manifest["model"]["id"] = manifest["model"]["source"]["source"] = name
    with pytest.raises(ManifestError) as err:
        validate_manifest(manifest)
    assert f"model.id: {name!r} is not a hub id or a folder or file name" in str(err.value)
    assert "model.source.source:" in str(err.value)


def test_missing_shape_fields_are_named(tmp_path):
    root = make_export(tmp_path / "out", checkpoint={"num_kv_heads": None, "head_dim": None})
    with pytest.raises(ManifestError, match="checkpoint section lacks num_kv_heads, head_dim"):
        build_manifest(root)


def test_schema_command_prints_the_shipped_schema():
    result = CliRunner().invoke(main, ["schema", "manifest"])
    assert result.exit_code == 0 and json.loads(result.output) == schema()
    fallback = CliRunner().invoke(main, ["schema", "fallback"])
    assert json.loads(fallback.output)["title"] == "Fallback"


# --- fallback config --------------------------------------------------------------------------------------


def test_fallback_yaml_example_loads():
    from pathlib import Path

    fb = load_fallback(Path(__file__).resolve().parents[1] / "examples/fallback.yaml")
    assert fb.auth.kind == "proxy" and [p.id for p in fb.model.providers] == ["groq", "together"]


def test_fallback_rejects_tokens_and_reports_every_problem(tmp_path):
    fake_token = "hf_" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGH"  # built here so no token sits in the tree
    bad = tmp_path / "fb.yaml"
    bad.write_text(
        "mode: prefer_cloud\nendpoint: http://example.com/v1\nbill_to: acme\n"
        "model: {id: 'acme/m:groq', providers: [groq, mystery]}\n"
        "retries: {statuses: [429, 404]}\nauth: {kind: proxy, proxy_url: 'https://x.example', token: "
        f"{fake_token}}}\ncolour: blue\n"
    )
    with pytest.raises(ConfigError) as err:
        load_fallback(bad)
    text = str(err.value)
    for expected in (
        "auth.token: looks like a credential key",
        "auth.token: looks like a Hugging Face token 'hf_abc...' (37 chars)",
        "endpoint: Value error, 'http://example.com/v1' must be an https URL",
        "model.id: Value error, 'acme/m:groq': put the provider policy in 'policy' or 'providers'",
        "model.providers.1.id: Value error, unknown provider 'mystery'",
        "retries.statuses: Value error, only 429 and 5xx are retryable, got [404]",
        "auth.token: unknown key; allowed keys: kind, proxy_url, scope",
        "colour: unknown key; allowed keys:",
    ):
        assert expected in text, expected
    assert fake_token not in text  # never echo the secret


def test_fallback_coherence_rules():
    with pytest.raises(ValueError, match="mode prefer_cloud calls the cloud: set auth.kind"):
        Fallback(mode="prefer_cloud")
    with pytest.raises(ValueError, match="contradicts privacy.cloud_allowed: false"):
        Fallback(mode="cloud_only", auth=OAUTH, privacy={"cloud_allowed": False})
    with pytest.raises(ValueError, match="deadline_s .5.0. is shorter than attempt_timeout_s .20.0."):
        Fallback(auth=OAUTH, deadline_s=5)


def test_known_providers_are_huggingface_hubs_chat_providers():
    """Derived from the installed huggingface_hub: every provider its InferenceClient accepts that serves chat
    completions through the router, and nothing it no longer has."""
    import typing

    from huggingface_hub import InferenceClient
    from huggingface_hub.inference._providers import PROVIDERS

    from edgepack.fallback import provider_ids

    hint = typing.get_type_hints(InferenceClient.__init__)["provider"]
    hub = {a for lit in typing.get_args(hint) for a in typing.get_args(lit)} - {"auto"}
    assert set(provider_ids()) <= hub
    assert set(provider_ids()) == {p for p in hub if "conversational" in PROVIDERS[p]} - {"openai"}
    assert {"groq", "together", "hf-inference"} <= set(provider_ids())


def test_unknown_provider_exits_2_naming_the_known_ones(tiny_checkpoint, tmp_path):
    from edgepack.fallback import provider_ids

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint("llama")), "--target", "onnx", "--out", str(out),
                                       "--recipe", "fp32", "--no-parity", "--providers", "groq,sambanova-x",
                                       "--fallback-auth", "user_oauth"])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown provider 'sambanova-x'" in lines[0]
    assert ", ".join(provider_ids()) in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def test_fallback_from_cli_flags_override_file(tmp_path):
    assert fallback_from_cli() is None
    cfg = tmp_path / "fb.yaml"
    cfg.write_text(
        "mode: prefer_on_device\nauth: {kind: user_oauth}\nmodel: {policy: cheapest}\nretries: {count: 1}\n"
    )
    fb = fallback_from_cli(fallback_config=str(cfg), providers="groq=4,together", fallback_retries=3,
                           bill_to="acme", fallback_mode="prefer_cloud")  # fmt: skip
    assert fb.mode == "prefer_cloud" and fb.retries.count == 3 and fb.bill_to == "acme"
    assert fb.model.policy is None and [(p.id, p.timeout_s) for p in fb.model.providers] == [
        ("groq", 4),
        ("together", None),
    ]
    with pytest.raises(ConfigError, match="unknown provider 'grok'"):
        fallback_from_cli(fallback_auth="user_oauth", providers="grok")
    proxy = fallback_from_cli(
        proxy_url="https://api.example.com/llm", fallback_model="acme/big", cloud_twin="larger"
    )
    assert proxy.auth.kind == "proxy" and proxy.model.id == "acme/big"
