"""End to end through the CLI on real files: export -> parity -> reports -> manifest, and the parity gate."""

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from helpers import corrupt_tensor, weight


@pytest.fixture(scope="module")
def onnx_export(tiny_checkpoint, tmp_path_factory):
    """A tiny sliding-window Mistral exported to ONNX at fp32, parity checked at 1e-4."""
    model = tiny_checkpoint("mistral", sliding_window=8)
    out = tmp_path_factory.mktemp("exports") / "mistral-onnx"
    result = CliRunner().invoke(
        main,
        ["export", str(model), "--recipe", "fp32", "--target", "onnx", "--out", str(out), "--max-seq-len", "96",
         "--max-abs-diff", "1e-4", "--json"],
    )
    assert result.exit_code == 0, result.stderr
    return model, out, json.loads(result.output)


def test_export_writes_the_complete_folder(onnx_export):
    _, out, summary = onnx_export
    for name in ("export.json", "manifest.json", "parity.json", "parity.md", "parity.junit.xml",
                 "tokenizer/tokenizer.json", "onnx/model.onnx", "onnx/artifact.json", "onnx/genai_config.json"):
        assert (out / name).is_file(), name
    assert summary["parity"]["passed"] is True
    assert [a["target"] for a in summary["artifacts"]] == ["onnx"]
    assert not list(out.parent.glob(".mistral-onnx*")), "no temporary folders left"


def test_fp32_parity_within_1e4_past_the_window(onnx_export):
    _, out, _ = onnx_export
    report = json.loads((out / "parity.json").read_text())
    assert report["schema_version"] == 1 and report["passed"]
    (art,) = report["artifacts"]
    assert art["thresholds"]["max_abs_diff"] == 1e-4
    assert art["metrics"]["max_abs_diff"] < 1e-4
    assert art["metrics"]["top1"] == 1.0 and art["metrics"]["greedy_agreement"] == 1.0
    window = [p for p in art["per_prompt"] if p["prompt"] == "past-window"]
    assert window and window[0]["tokens"] > 8, "a prompt longer than the sliding window is checked"
    assert art["split"] is None, "fp32 has no quantization to split out"


def test_junit_has_one_case_per_artifact_and_metric(onnx_export):
    _, out, _ = onnx_export
    suite = ET.parse(out / "parity.junit.xml").getroot()
    names = [c.get("name") for c in suite.iter("testcase")]
    assert "onnx/model.onnx::max_abs_diff" in names and "onnx/model.onnx::kl" in names
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(names) >= 5


def test_corrupted_weight_fails_the_gate(onnx_export, tmp_path):
    model, out, _ = onnx_export
    broken = shutil.copytree(out, tmp_path / "broken")
    files = sorted((broken / "onnx").glob("model.onnx*"))
    corrupt_tensor(files, weight(model, "model.layers.1.mlp.down_proj.weight"))
    result = CliRunner().invoke(main, ["parity", str(broken), "--quiet"])
    assert result.exit_code == 1
    assert "parity failed" in result.stderr and "onnx/model.onnx: max_abs_diff = " in result.stderr
    report = json.loads((broken / "parity.json").read_text())
    assert report["passed"] is False
    assert {f["metric"] for f in report["artifacts"][0]["failures"]} >= {"max_abs_diff"}
    suite = ET.parse(broken / "parity.junit.xml").getroot()
    assert int(suite.get("failures")) >= 1


def test_a_failed_recheck_reaches_the_manifest_and_verify_fails(onnx_export, tmp_path):
    """The manifest an app reads says what the latest check said; verify fails on a failed re-check and on any
    manifest that disagrees with parity.json (as one written before the re-check would)."""
    model, out, _ = onnx_export
    broken = shutil.copytree(out, tmp_path / "broken")
    passed_manifest = (broken / "manifest.json").read_text()
    assert json.loads(passed_manifest)["artifacts"][0]["parity"]["status"] == "passed"
    corrupt_tensor(sorted((broken / "onnx").glob("model.onnx*")), weight(model, "model.layers.1.mlp.down_proj.weight"))
    assert CliRunner().invoke(main, ["parity", str(broken), "--quiet"]).exit_code == 1

    (entry,) = json.loads((broken / "manifest.json").read_text())["artifacts"]
    assert entry["parity"]["status"] == "failed" and entry["parity"]["failures"][0]["metric"] == "max_abs_diff"
    assert not list(broken.glob(".*.tmp"))  # reports and manifest replaced atomically
    result = CliRunner().invoke(main, ["verify", str(broken)])
    assert result.exit_code == 1 and "onnx/model.onnx: parity failed: max_abs_diff" in result.output + result.stderr

    (broken / "manifest.json").write_text(passed_manifest)  # a manifest from before the failed re-check
    result = CliRunner().invoke(main, ["verify", str(broken)])
    assert result.exit_code == 1
    assert ("onnx/model.onnx: manifest.json says parity passed but the latest check (parity.json) failed"
            in result.output + result.stderr)
    as_json = CliRunner().invoke(main, ["verify", str(broken), "--json"])
    report = json.loads(as_json.stdout)  # the report on stdout even when it fails
    assert as_json.exit_code == 1 and report["ok"] is False and any("says parity passed" in p for p in report["problems"])


def test_route_sends_a_prompt_past_the_on_device_context_to_the_default_cloud(onnx_export, tmp_path):
    """The export's default fallback works: a prompt longer than the artifact's context goes to the Inference
    Providers router (the family's default model: a local folder has no hub id), and the decision says why."""
    _, out, _ = onnx_export
    manifest = json.loads((out / "manifest.json").read_text())
    device = next(d["device"] for d in manifest["devices"] if d["artifact"])
    (tmp_path / "state.json").write_text(json.dumps({"device": device}))
    (tmp_path / "request.json").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "Summarise this."}], "prompt_tokens": 500, "max_tokens": 16}))
    result = CliRunner().invoke(main, ["route", "--manifest", str(out), "--device-state", str(tmp_path / "state.json"),
                                       "--request", str(tmp_path / "request.json"), "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)["decision"]
    assert decision["route"] == "cloud" and decision["triggers"] == ["context_overflow"]
    assert "prompt + max_tokens = 516 tokens > on-device context 96" in decision["reasons"][0]
    assert decision["candidates"][0]["model"] == "mistralai/Mistral-7B-Instruct-v0.3:fastest"


def test_route_chooses_the_devices_entry_from_hardware_facts(onnx_export, tmp_path):
    """An app passes what it reads of its device; the manifest's selection table (in evaluation order) picks the
    entry, and with it the artifact; no entry matching means no artifact, so the default fallback goes to the cloud."""
    _, out, _ = onnx_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device_selection"].startswith("The first entry of devices")
    (tmp_path / "request.json").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}))

    def route(hardware):
        (tmp_path / "state.json").write_text(json.dumps({"hardware": hardware}))
        result = CliRunner().invoke(main, ["route", "--manifest", str(out), "--device-state", str(tmp_path / "state.json"),
                                           "--request", str(tmp_path / "request.json"), "--dry-run"])  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["decision"]

    s24 = route({"platform": "android", "os_version": "14", "ram_bytes": 7_600_000_000, "machine_id": "SM-S921B"})
    assert s24["route"] == "on_device" and s24["artifact"] == "onnx/model.onnx" and s24["device"] == "galaxy-s24"
    old = route({"platform": "ios", "os_version": "16.7", "ram_bytes": 4_000_000_000})
    assert old["route"] == "cloud" and old["triggers"] == ["no_artifact"]
    assert "no devices entry matches ios 16.7, 4.0 GB RAM" in old["reasons"][0]


def test_parity_on_a_folder_without_artifacts(tmp_path):
    (tmp_path / "export.json").write_text("{}")
    result = CliRunner().invoke(main, ["parity", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path} holds no artifacts to check (no */artifact.json)."


def test_parity_on_a_folder_that_is_not_an_export(tmp_path):
    result = CliRunner().invoke(main, ["parity", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not an edgepack export folder (no export.json)" in result.stderr


def test_parity_with_an_unreadable_artifact(onnx_export, tmp_path):
    _, out, _ = onnx_export
    broken = shutil.copytree(out, tmp_path / "unreadable")
    (broken / "onnx" / "model.onnx").write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["parity", str(broken), "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "onnx/model.onnx" in lines[0]
    assert "cannot load" in lines[0] or "could not be run" in lines[0]


def test_force_replaces_an_existing_export(onnx_export, tmp_path):
    model, _, _ = onnx_export
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    args = ["export", str(model), "--recipe", "fp32", "--target", "onnx", "--out", str(out), "--no-parity", "-q"]
    assert CliRunner().invoke(main, args).exit_code == 2
    result = CliRunner().invoke(main, args + ["--force"])
    assert result.exit_code == 0, result.stderr
    assert not (out / "stale.txt").exists() and (out / "onnx" / "model.onnx").is_file()
    assert not (out / "parity.json").exists()


def test_drift_fails_the_export_loudly_but_keeps_the_complete_folder(tiny_checkpoint, tmp_path):
    """A threshold the export cannot meet: exit 1 naming artifact, metric, value and threshold; the folder is
    complete (to inspect) and its manifest records the failure."""
    out = tmp_path / "drifted"
    result = CliRunner().invoke(
        main,
        ["export", str(tiny_checkpoint("llama")), "--recipe", "int8-weight", "--target", "onnx", "--out", str(out),
         "--max-seq-len", "64", "--max-abs-diff", "1e-9", "--quiet"],
    )
    assert result.exit_code == 1, result.stderr
    assert "parity failed" in result.stderr
    assert "onnx/model.onnx: max_abs_diff = " in result.stderr and "must be <= 1e-09" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert entry["parity"]["status"] == "failed"
    assert entry["parity"]["failures"][0]["metric"] == "max_abs_diff"
    split = json.loads((out / "parity.json").read_text())["artifacts"][0]["split"]
    assert split is not None and set(split) == {"quantization", "conversion"}


@pytest.fixture(scope="module")
def pte_export(tiny_checkpoint, tmp_path_factory):
    """A tiny Llama exported to ExecuTorch at fp32 through the CLI, parity checked at 1e-4."""
    model = tiny_checkpoint("llama")
    out = tmp_path_factory.mktemp("exports") / "llama-pte"
    result = CliRunner().invoke(
        main,
        ["export", str(model), "--recipe", "fp32", "--target", "executorch", "--out", str(out),
         "--max-seq-len", "64", "--max-abs-diff", "1e-4", "--quiet"],
    )
    assert result.exit_code == 0, result.stderr
    return model, out


def test_corrupted_pte_weight_fails_the_gate(pte_export, tmp_path):
    model, out = pte_export
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["artifacts"][0]["metrics"]["max_abs_diff"] < 1e-4
    broken = shutil.copytree(out, tmp_path / "broken")
    corrupt_tensor([broken / "executorch" / "model.pte"], weight(model, "model.layers.0.mlp.up_proj.weight"))
    result = CliRunner().invoke(main, ["parity", str(broken), "--quiet"])
    assert result.exit_code == 1, result.stderr
    assert "executorch/model.pte: max_abs_diff = " in result.stderr


def test_the_summary_shows_parity_beside_its_thresholds_the_paths_and_the_next_command(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint("llama")), "--recipe", "fp32", "--target", "onnx",
                                       "--out", str(out), "--max-seq-len", "32"], env={"COLUMNS": "250"})  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    report = json.loads((out / "parity.json").read_text())["artifacts"][0]
    assert f"{report['metrics']['top1']:.3f} ({report['thresholds']['min_top1']:g})" in text
    assert f"manifest: {out / 'manifest.json'}" in text and f"parity: {out / 'parity.md'}" in text
    assert f"next: edgepack bundle {out} --out {out}-bundles && edgepack verify {out}-bundles" in text
