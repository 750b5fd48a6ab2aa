"""``edgepack export``: a thin wrapper over ``edgepack.pipeline.export``."""

from __future__ import annotations

import click

from edgepack.backends import target_names
from edgepack.logs import quiet_libraries
from edgepack.cli._common import COMMA_LIST, Progress, handle_errors, print_json
from edgepack.cli._fallback import FALLBACK_PARAMS, fallback_from_cli, fallback_options
from edgepack.cli.parity_cmd import parity_threshold_options, thresholds_from


@click.command()
@click.argument("model")
@click.option("--recipe", "-r", default="int4-block32", show_default=True, help="Shipped recipe name or a YAML path.")
@click.option("--target", "-t", "targets", type=COMMA_LIST, default=None,
              help=f"Comma list of targets ({', '.join(target_names())}). Default: every target.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder (written atomically).")
@click.option("--max-seq-len", type=int, default=None, help="KV cache length. Default: min(context, 2048).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--no-parity", is_flag=True, help="Skip the parity check against the reference model.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), help="Parity prompts file (YAML/JSON).")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration text for gptq recipes (.txt, or .jsonl of {text} / {messages}). Default: built-in.")
@click.option("--text", "text", default=None,
              help="Parity also over a long text (a UTF-8 file, or 'builtin'); see edgepack parity --help.")
@parity_threshold_options
@click.option("--allow-pickle", is_flag=True, help="Allow pickled weights (*.bin, *.pt): they can run code.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a checkpoint that needs custom code (auto_map).")
@fallback_options
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@handle_errors
def export(model, recipe, targets, out, max_seq_len, force, no_parity, prompts, calibration, text, allow_pickle,
           trust_remote_code, quiet, as_json, **flags):
    """Export MODEL (a local HF folder, a .gguf file or a hub id) to on-device artifacts."""
    quiet_libraries()
    from edgepack.pipeline import export as run_export

    fallback = fallback_from_cli(**{k: flags.pop(k) for k in FALLBACK_PARAMS})
    with Progress(quiet or as_json) as progress:
        result = run_export(
            model,
            out=out,
            recipe=recipe,
            targets=targets,
            max_seq_len=max_seq_len,
            force=force,
            parity=not no_parity,
            parity_options={"prompts_file": prompts, "thresholds": thresholds_from(flags), "text": text},
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            fallback=fallback,
            calibration=calibration,
            progress=progress,
        )
    if as_json:
        print_json(result.summary())
    elif not quiet:
        _print_summary(result)


SHOWN = (("top1", "top-1", ">="), ("kl", "KL", "<="), ("cosine", "cosine", ">="))  # metric, header, gate


def _print_summary(result) -> None:
    """What was built, where, how big, each artifact's parity beside its thresholds, and what to run next."""
    from rich.table import Table

    from edgepack.cli._common import console

    table = Table(title=f"edgepack export -> {result.out} ({result.seconds:.1f}s)")
    for col in ("target", "artifact", "MB", "export s", *(f"{h} ({op} gate)" for _, h, op in SHOWN), "parity"):
        table.add_column(col)
    summary = result.summary()
    parity = (summary["parity"] or {}).get("artifacts", {})
    for a in summary["artifacts"]:
        p = parity.get(a["target"])
        verdict = "-" if p is None else ("pass" if p["passed"] else "FAIL")
        table.add_row(a["target"], a["path"], f"{a['bytes'] / 1e6:.1f}", f"{a['export_seconds']:.1f}",
                      *(_beside(p, metric) for metric, _, _ in SHOWN), verdict)  # fmt: skip
    out, _ = console()
    out.print(table)
    for warning in result.warnings:
        out.print(f"[yellow]not honoured[/yellow] {warning}")
    if result.manifest:
        out.print(f"manifest: {result.manifest}")
    if (result.out / "parity.md").is_file():
        out.print(f"parity:   {result.out / 'parity.md'} (and parity.json, parity.junit.xml)")
    out.print(f"next:     edgepack bundle {result.out} --out {result.out}-bundles && "
              f"edgepack verify {result.out}-bundles")


def _beside(parity: dict | None, metric: str) -> str:
    """``0.834 (0.69)``: the measured value and, in brackets, the recipe's threshold for it."""
    from edgepack.parity.metrics import THRESHOLDS

    if parity is None or metric not in parity:
        return "-"
    key = next(k for k, (m, _) in THRESHOLDS.items() if m == metric)
    gate = parity.get("thresholds", {}).get(key)
    return f"{parity[metric]:.3f}" + (f" ({gate:g})" if gate is not None else "")
