"""edgepack bench: per-artifact speed and peak RSS, each artifact in a fresh process."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.bench import Protocol, bench, format_table, prompt_ids
from edgepack.cli import main
from tiny_export import tiny_onnx_export

SMALL = Protocol(prompt_tokens=12, decode_tokens=6, repeats=3, warmup=1, threads=1)


@pytest.fixture(scope="module")
def onnx_export(tiny_checkpoint, tmp_path_factory):
    return tiny_onnx_export(tmp_path_factory, tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def report(onnx_export):
    return bench(onnx_export, protocol=SMALL)


def test_figures_are_positive_and_consistent(report, onnx_export):
    (m,) = report.results
    assert m.ok, m.error
    assert m.name == "edgepack onnx" and m.runtime.startswith("onnxruntime ")
    model_files = [onnx_export / "onnx" / n for n in ("model.onnx", "model.onnx.data") if (onnx_export / "onnx" / n).exists()]
    assert m.bytes >= sum(p.stat().st_size for p in model_files) > 0
    assert len(m.runs) == SMALL.repeats
    # medians of the timed runs, and rates derived from them
    assert m.ttft_seconds == pytest.approx(statistics.median(r["ttft_seconds"] for r in m.runs))
    assert m.decode_seconds == pytest.approx(statistics.median(r["decode_seconds"] for r in m.runs))
    assert m.decode_tokens_per_second == pytest.approx(SMALL.decode_tokens / m.decode_seconds)
    assert m.prefill_tokens_per_second == pytest.approx(SMALL.prompt_tokens / m.ttft_seconds)
    assert 0 < m.load_seconds and 0 < m.ttft_seconds < 60 and 0 < m.decode_seconds < 60
    # the child's own high-water mark: above its baseline (runtime imported, model not yet loaded)
    assert m.peak_rss_bytes > m.baseline_rss_bytes > 10 * 2**20
    assert report.protocol["repeats"] == SMALL.repeats and report.machine["cpus"] >= 1


def test_each_artifact_carries_the_memory_estimate_for_its_run(report, onnx_export):
    """onnxruntime's cache grows, so the estimate is taken at the tokens the run held (prompt + decode)."""
    from edgepack.memory import artifact_footprints

    (m,) = report.results
    ((_, footprint),) = artifact_footprints(onnx_export)
    assert m.estimate_bytes == footprint.at(SMALL.prompt_tokens + SMALL.decode_tokens).total
    ratio = m.estimate_bytes / (m.peak_rss_bytes - m.baseline_rss_bytes)
    assert f"{ratio:.2f}" in format_table(report).splitlines()[3]  # head, blank, column names, the row


def test_greedy_tokens_match_a_direct_decode(report, onnx_export):
    """The worker decodes what the runner decodes in this process: the figures come from real generation."""
    from edgepack.parity import open_runner
    from edgepack.parity.harness import discover

    (artifact,) = discover(onnx_export)
    runner = open_runner(onnx_export, artifact)
    token = int(np.argmax(runner.forward(prompt_ids(onnx_export / "tokenizer", SMALL.prompt_tokens))[-1]))
    expected = [token]
    for _ in range(SMALL.decode_tokens):
        token = int(np.argmax(runner.forward([token])[-1]))
        expected.append(token)
    assert report.results[0].greedy == expected


def test_too_long_a_run_is_an_error_row_not_a_crash(onnx_export):
    max_seq_len = json.loads((onnx_export / "export.json").read_text())["max_seq_len"]
    result = bench(onnx_export, protocol=Protocol(prompt_tokens=max_seq_len, decode_tokens=4, repeats=1, warmup=0))
    (m,) = result.results
    assert not m.ok and "exceed the artifact's" in m.error and "--prompt-tokens" in m.error
    assert "exceed" in format_table(result)


def test_cli_json_writes_bench_json(onnx_export):
    args = ["bench", str(onnx_export), "--json", "-q", "--prompt-tokens", "8", "--decode-tokens", "4",
            "--repeats", "1", "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads((onnx_export / "bench.json").read_text())
    (m,) = printed["results"]
    assert m["decode_tokens_per_second"] == pytest.approx(4 / m["decode_seconds"])


def test_cli_rejects_bad_options_all_at_once(onnx_export):
    result = CliRunner().invoke(main, ["bench", str(onnx_export), "--repeats", "0", "--decode-tokens", "0"])
    assert result.exit_code == 2
    assert "--repeats must be at least 1, got 0" in result.output
    assert "--decode-tokens must be at least 1, got 0" in result.output


def test_cli_on_a_folder_that_is_no_export(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not an edgepack export folder" in result.output


@pytest.mark.slow
def test_smollm2_int4_block32_on_both_runtimes(smollm2_int4):
    result = bench(smollm2_int4, protocol=Protocol(prompt_tokens=64, decode_tokens=16, repeats=3, warmup=1),
                   targets=["executorch", "onnx"])
    by_name = {m.name: m for m in result.results}
    assert set(by_name) == {"edgepack executorch", "edgepack onnx"}
    for m in by_name.values():
        assert m.ok, m.error
        assert m.decode_tokens_per_second > 5 and 30e6 < m.bytes < 200e6
        assert m.peak_rss_bytes > m.baseline_rss_bytes
        # edgepack.memory's estimate against what the runtime really took (docs/memory.md states the figures)
        ratio = m.estimate_bytes / (m.peak_rss_bytes - m.baseline_rss_bytes)
        assert 0.6 < ratio < 1.6, f"{m.name}: estimate / measured = {ratio:.2f}"
    print(format_table(result))
    # Each runtime decoded every token it was asked for. (Their greedy tokens are not compared: torchao's and
    # onnxruntime's int4 round differently, and parity shows SmolLM2 diverging after a few tokens under int4.)
    for m in by_name.values():
        assert len(m.greedy) >= 16


def test_an_anchor_that_cannot_be_installed_is_reported_unavailable(onnx_export, tmp_path):
    """No build, no network: the venv's marker records why each anchor failed to install."""
    from edgepack.anchors import GENAI_OVERLAY, MARKER, REQUIREMENTS, prepare_anchors

    env = tmp_path / "venv"
    env.mkdir()
    failed = {"optimum-executorch": "could not install optimum-executorch: ResolutionImpossible",
              "llama.cpp": "could not install llama.cpp: cmake failed"}  # fmt: skip
    (env / MARKER).write_text(json.dumps({"requirements": REQUIREMENTS, "overlay": GENAI_OVERLAY, "failed": failed}))
    anchors = prepare_anchors(onnx_export, env_dir=env, work_dir=tmp_path / "work", gguf=None)
    by_name = {a.name: a for a in anchors}
    assert by_name["optimum-executorch"].unavailable == failed["optimum-executorch"]
    assert by_name["llama.cpp"].unavailable == failed["llama.cpp"]
    # installed but cannot build here (the venv has no python): a reason, not an exception
    assert by_name["onnxruntime-genai"].unavailable.startswith("could not build the onnxruntime-genai ONNX folder")
    result = bench(onnx_export, protocol=SMALL, anchors=[by_name["optimum-executorch"], by_name["llama.cpp"]])
    table = format_table(result)
    assert "unavailable: could not install optimum-executorch: ResolutionImpossible" in table
    assert "unavailable: could not install llama.cpp: cmake failed" in table
    assert result.results[0].ok  # edgepack's own artifact is still measured


def test_anchor_venv_installs_only_the_anchors_asked_for(tmp_path, monkeypatch):
    """`edgepack quality --anchor` needs onnxruntime-genai alone; `make bench` later installs just the others."""
    from edgepack import anchors

    commands = []
    monkeypatch.setattr(anchors, "_run", lambda cmd, what, env=None: commands.append(what))
    env = tmp_path / "venv"
    env.mkdir()  # what `python -m venv` would have made (the mock runs nothing)
    _, failed = anchors.ensure_env(env, names=("onnxruntime-genai",))
    assert failed == {} and commands == ["create the anchors' venv", "install onnxruntime-genai",
                                         "install the builder's transformers"]  # fmt: skip
    commands.clear()
    assert anchors.ensure_env(env, names=("onnxruntime-genai",)) == (str(env / "bin" / "python"), {})
    assert commands == []  # already attempted: nothing runs
    anchors.ensure_env(env)
    assert commands == ["create the anchors' venv", "install optimum-executorch", "install llama.cpp"]
    assert set(json.loads((env / anchors.MARKER).read_text())["attempted"]) == set(anchors.ANCHORS)
