"""``edgepack bench-stages MODEL``: wall time and peak RSS of each export stage (see edgepack.bench_stages)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgepack.cli._common import COMMA_LIST, Progress, handle_errors, print_json


@click.command()
@click.argument("model")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for the exports.")
@click.option("--recipe", "-r", default="int4-block32", show_default=True)
@click.option("--target", "-t", "targets", type=COMMA_LIST, default="onnx,coreml,executorch", show_default=True)
@click.option("--max-seq-len", type=int, default=2048, show_default=True)
@click.option("--limit-gb", type=float, default=16.0, show_default=True,
              help="Kill a stage whose process tree passes this resident memory.")  # fmt: skip
@click.option("--no-parity", is_flag=True, help="Export stages only.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def bench_stages(model, out, recipe, targets, max_seq_len, limit_gb, no_parity, as_json, quiet):
    """Run each stage for MODEL (a folder; ``smollm2``, the built-in real model; or ``ministral3-3b``, a random
    checkpoint with Ministral 3 3B's text configuration, built once) in its own process and print wall time and
    peak RSS per stage."""
    from edgepack.bench_stages import PRESETS, checkpoint_bytes, format_table, random_checkpoint, run_stages, to_json
    from edgepack.checkpoint import resolve

    with Progress(quiet) as say:
        if model == "smollm2":
            from edgepack.demo import smollm2_checkpoint

            path = smollm2_checkpoint()
        else:
            path = random_checkpoint(model, progress=say) if model in PRESETS else Path(model)
        params = resolve(path).num_parameters
        out.mkdir(parents=True, exist_ok=True)
        results = run_stages(path, out, recipe=recipe, max_seq_len=max_seq_len, targets=targets, limit_gb=limit_gb,
                             parity=not no_parity, progress=say)  # fmt: skip
    report = to_json(results, path, checkpoint_bytes(path), params)
    (out / "bench-stages.json").write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        print_json(report)
    else:
        click.echo(f"{path}: {params / 1e9:.2f} B parameters, {report['checkpoint_bytes'] / (1 << 30):.2f} GiB")
        click.echo(format_table(results, report["checkpoint_bytes"], params))
