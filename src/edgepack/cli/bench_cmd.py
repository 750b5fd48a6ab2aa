"""`edgepack bench DIR`: speed and peak memory of each artifact in its host runtime (see edgepack.bench)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgepack.export_record import is_export_folder
from edgepack.logs import quiet_libraries
from edgepack.cli._common import COMMA_LIST, Progress, handle_errors, print_json


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--prompt-tokens", default=128, show_default=True, help="Prompt length (one prefill chunk).")
@click.option("--decode-tokens", default=64, show_default=True, help="Tokens decoded after the first one.")
@click.option("--repeats", default=5, show_default=True, help="Timed runs; figures are their medians.")
@click.option("--warmup", default=1, show_default=True, help="Untimed runs before the timed ones.")
@click.option("--threads", type=int, default=None, help="Threads per runtime. Default: every core.")
@click.option("-t", "--target", "targets", type=COMMA_LIST, default=None, help="Comma list of targets to bench. Default: all.")
@click.option("--build", is_flag=True, help="Export EXPORT_DIR first (--model, --recipe) if it holds no export.")
@click.option("--model", default=None, help="With --build: the model. Default: the built-in SmolLM2-135M.")
@click.option("--recipe", default="int4-block32", show_default=True, help="With --build: the recipe.")
@click.option("--anchors", "with_anchors", is_flag=True,
              help="Also measure optimum-executorch's .pte, onnxruntime-genai's ONNX and llama.cpp's GGUF.")  # fmt: skip
@click.option("--anchor-env", type=click.Path(path_type=Path), default=None,
              help="The anchors' throwaway venv. Default: .anchors-venv beside EXPORT_DIR.")  # fmt: skip
@click.option("--gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The llama.cpp anchor's GGUF. Default: the original GGUF of the built-in model.")  # fmt: skip
@click.option("--report", "with_report", is_flag=True, help="Also write report.md and report.html into EXPORT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@handle_errors
def bench(export_dir, prompt_tokens, decode_tokens, repeats, warmup, threads, targets, build, model, recipe,
          with_anchors, anchor_env, gguf, with_report, as_json, quiet):  # fmt: skip
    """Benchmark each artifact of EXPORT_DIR in its host runtime: TTFT, prefill and decode tokens/s, peak RSS.

    Each artifact (and each anchor) runs in a fresh process; the bench JSON is written to EXPORT_DIR/bench.json.
    """
    from edgepack.bench import Protocol, format_table
    from edgepack.bench import bench as run_bench

    quiet_libraries()
    protocol = Protocol(prompt_tokens, decode_tokens, repeats, warmup, threads)
    protocol.check()
    with Progress(quiet) as say:
        if build and not is_export_folder(export_dir):
            _build(export_dir, model, recipe, say)
        anchors = _anchors(export_dir, anchor_env, gguf, say) if with_anchors else []
        report = run_bench(export_dir, protocol=protocol, targets=targets, anchors=anchors, progress=say)
        (export_dir / "bench.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        if with_report:
            from edgepack.report import write_report

            paths = write_report(export_dir)
            say("report: " + ", ".join(str(p) for p in paths))
    if as_json:
        print_json(report.to_json())
    else:
        click.echo(format_table(report))


def _build(export_dir: Path, model: str | None, recipe: str, say) -> None:
    from edgepack.pipeline import export

    if model is None:
        from edgepack.demo import smollm2_checkpoint

        model = str(smollm2_checkpoint())
    from edgepack.errors import ParityError

    export_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        export(model, out=export_dir, recipe=recipe, targets=["executorch", "onnx"], progress=say)
    except ParityError as exc:  # the export is written; speed is still worth measuring, the report shows parity
        click.echo(f"warning: {exc}", err=True)


def _anchors(export_dir: Path, anchor_env: Path | None, gguf: Path | None, say):
    from edgepack.anchors import prepare_anchors

    env = anchor_env or export_dir.parent / ".anchors-venv"
    work = export_dir.with_name(export_dir.name + ".anchors")
    work.mkdir(parents=True, exist_ok=True)
    return prepare_anchors(export_dir, env_dir=env, work_dir=work, gguf=gguf, progress=say)
