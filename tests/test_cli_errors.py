"""Bad input at the command line: one line naming the problem and the fix, exit 2, no traceback, and nothing
left at the output path."""

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgepack.cli import main


@pytest.fixture
def llama(tiny_checkpoint, tmp_path):
    return shutil.copytree(tiny_checkpoint("llama"), tmp_path / "model")


def _damage(kind, model, tmp_path):
    """Break ``model`` (or the arguments) in one way; return the extra CLI args."""
    if kind == "missing config.json":
        (model / "config.json").unlink()
    elif kind == "truncated safetensors":
        w = model / "model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
    elif kind == "pickle-only":
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
        (model / "model.safetensors").unlink()
    elif kind == "custom code":
        (model / "modeling_x.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
        cfg = json.loads((model / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
        (model / "config.json").write_text(json.dumps(cfg))
    elif kind == "unsupported architecture":
        cfg = json.loads((model / "config.json").read_text())
        cfg["model_type"], cfg["architectures"] = "rwkv", ["RwkvForCausalLM"]
        (model / "config.json").write_text(json.dumps(cfg))
    elif kind == "unknown recipe":
        return ["--recipe", "int2-dreams"]
    elif kind == "misspelled recipe key":
        bad = tmp_path / "typo.yaml"
        bad.write_text("name: typo\nrules: []\nlm_haed: null\n")
        return ["--recipe", str(bad)]
    elif kind == "max-seq-len beyond context":
        return ["--max-seq-len", "100000"]
    elif kind == "unknown target":
        return ["--target", "tflite"]
    elif kind == "max-seq-len below a target's minimum":
        return ["--target", "onnx,executorch", "--max-seq-len", "2"]
    return []


CASES = {
    "missing config.json": "has no config.json. Pass a Hugging Face model folder",
    "truncated safetensors": "corrupt or truncated",
    "pickle-only": "pass --allow-pickle if you trust the source",
    "custom code": "review the code and pass --trust-remote-code",
    "unsupported architecture": "RwkvForCausalLM (model_type 'rwkv') is not supported. Supported model types:",
    "unknown recipe": "unknown recipe; shipped recipes: fp16, fp32",
    "misspelled recipe key": "lm_haed: unknown key; allowed keys: description, dtype, embedding, lm_head",
    "max-seq-len beyond context": "exceeds the model's context length (256). Pass --max-seq-len 256 or less",
    "unknown target": "Unknown target 'tflite'. Supported: ",
    "max-seq-len below a target's minimum": "--max-seq-len must be at least 3 for executorch, got 2.",
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_gives_one_clear_line_and_exit_2(kind, llama, tmp_path):
    extra = _damage(kind, llama, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(llama), "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 2, result.output
    assert CASES[kind] in result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".out*")), "no temporary output left behind"
    assert not (tmp_path / "ran").exists(), "checkpoint code must never run"


def test_output_path_that_is_a_file(llama, tmp_path):
    out = tmp_path / "taken"
    out.write_text("keep me")
    result = CliRunner().invoke(main, ["export", str(llama), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert f"Output path {out} is a file" in result.stderr
    assert out.read_text() == "keep me"


def test_existing_output_is_not_touched_without_force(llama, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = CliRunner().invoke(main, ["export", str(llama), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert "Pass --force to replace it" in result.stderr
    assert (out / "old.txt").read_text() == "old"


def test_export_creates_missing_parents_and_quiet_means_an_empty_stderr(llama, tmp_path):
    """``--out a/b/c`` is created as ``mkdir -p`` would; ``--quiet`` prints nothing at all on success, in a real
    process, where torch's loggers and ExecuTorch's C++ runtime (its CPU probe) write to stderr too."""
    out = tmp_path / "a" / "b" / "c"
    # fp32: the lowering's own noise and the runtime's CPU probe are there at any recipe; int4's lowering would add
    # 45 s to the default tier for nothing more on stderr
    proc = subprocess.run([sys.executable, "-m", "edgepack", "export", str(llama), "--recipe", "fp32",
                           "--target", "executorch", "--out", str(out), "--max-seq-len", "32", "--quiet"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()
    assert proc.stderr == "" and proc.stdout == ""


@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_means_no_escape_codes(llama, tmp_path, no_color):
    """On a terminal (FORCE_COLOR) progress and summary are styled; with NO_COLOR they hold no escape code at all:
    no colour, no dim, no spinner moving the cursor."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"FORCE_COLOR": "1"}
    if no_color:
        env["NO_COLOR"] = "1"
    proc = subprocess.run([sys.executable, "-m", "edgepack", "export", str(llama), "--recipe", "fp32", "--target",
                           "onnx", "--out", str(tmp_path / "out"), "--max-seq-len", "32", "--no-parity"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "edgepack export ->" in proc.stderr
    assert ("\x1b" in proc.stderr + proc.stdout) is not no_color


def test_a_failed_export_removes_the_parents_it_created(llama, tmp_path, monkeypatch):
    from edgepack import pipeline
    from edgepack.errors import ExportError

    def fail(*args, **kwargs):
        raise ExportError("simulated failure while writing")

    monkeypatch.setattr(pipeline, "write_export_record", fail)
    (tmp_path / "a").mkdir()
    result = CliRunner().invoke(main, ["export", str(llama), "--out", str(tmp_path / "a" / "b" / "c"), "--quiet"])
    assert result.exit_code == 2 and "simulated failure" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "model"] and not any((tmp_path / "a").iterdir())


def test_demo_replaces_only_an_earlier_export(tmp_path):
    """Re-running the demo replaces its earlier export (and says so); any other folder is left alone."""
    from edgepack.demo import replaces_export

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--json"])
    assert result.exit_code == 2 and "is not an edgepack export. Pass --force" in result.stderr
    assert result.stdout == "" and (out / "notes.txt").read_text() == "keep"
    assert replaces_export(out, force=True) and not replaces_export(tmp_path / "new", force=False)
    (out / "export.json").write_text("{}")
    assert replaces_export(out, force=False)


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The installed console script, not just CliRunner: a missing model folder."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgepack", "export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1:] == [
        f"error: {tmp_path / 'nope'} is neither a local folder, a .gguf file nor a hub id (owner/name). "
        "Pass a local folder."
    ]


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from click.testing import CliRunner; from edgepack.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(main, ['export', '--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'coremltools', 'executorch', 'onnxruntime', 'transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_validate_reports_every_problem(tmp_path):
    bad = tmp_path / "recipes" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("name: bad\nrules: [{match: '*', weights: {bits: 5}, extra: 1}]\nfoo: 1\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "3 problems" in result.stderr
    assert "foo: unknown key" in result.stderr and "rules.0.extra: unknown key; allowed keys: match, weights" in result.stderr


def test_recipes_lists_and_shows():
    runner = CliRunner()
    listing = runner.invoke(main, ["recipes"])
    assert listing.exit_code == 0
    assert "int4-block32" in listing.output and "int4 g32 asym+int8 dyn act" in listing.output and "codes: gptq" in listing.output
    shown = runner.invoke(main, ["recipes", "int8-weight"])
    assert shown.exit_code == 0 and "bits: 8" in shown.output


def test_inspect_describes_the_checkpoint(tiny_checkpoint):
    result = CliRunner().invoke(main, ["inspect", str(tiny_checkpoint("mistral", sliding_window=8)), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["architecture"] == "mistral" and info["sliding_window"] == 8
    assert info["context_length"] == 256 and info["num_parameters"] > 0
    assert info["tokenizer"]["chat_template"] is True
    assert "int4-block32" in info["targets"]["onnx"]
