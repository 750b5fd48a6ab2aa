"""``edgepack parity DIR``: check every artifact of an export folder; exit 1 when one drifts."""

from __future__ import annotations


import click

from edgepack.logs import quiet_libraries
from edgepack.cli._common import COMMA_LIST, Progress, handle_errors, print_json

_FLAGS = {
    "max_abs_diff": "Largest allowed absolute logit difference.",
    "min_cosine": "Smallest allowed mean cosine similarity of logits.",
    "min_top1": "Smallest allowed top-1 agreement (0-1).",
    "min_top5_overlap": "Smallest allowed top-5 overlap (0-1).",
    "max_kl": "Largest allowed mean KL(reference || export).",
    "min_greedy_agreement": "Smallest allowed greedy agreement (0-1).",
}


def parity_threshold_options(fn):
    """--max-abs-diff, --min-top1, ...: override the recipe's parity thresholds."""
    for name, help_text in reversed(_FLAGS.items()):
        fn = click.option(f"--{name.replace('_', '-')}", name, type=float, default=None, help=help_text)(fn)
    return fn


def thresholds_from(flags: dict) -> dict:
    return {k: flags[k] for k in _FLAGS if flags.get(k) is not None}


@click.command()
@click.argument("export_dir", type=click.Path())
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), help="Prompts file (YAML/JSON list).")
@click.option("--decode-steps", type=int, default=8, show_default=True, help="Greedy decode steps per prompt.")
@click.option("--target", "targets", type=COMMA_LIST, default=None, help="Comma list: check only these targets.")
@click.option("--no-split", is_flag=True, help="Skip the quantization/conversion error split (saves one load).")
@click.option("--text", "text", default=None,
              help="Also check a long text, teacher-forced (a UTF-8 file, or 'builtin': ~2,000 tokens of prose); "
                   "reports perplexity and holds the text to the same thresholds.")  # fmt: skip
@click.option("--allow-pickle", is_flag=True,
              help="Let the reference load a checkpoint of pickled weights (.bin/.pt) -- only one you trust: export.json "
                   "names the checkpoint, and unpickling runs code.")  # fmt: skip
@parity_threshold_options
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print parity.json on stdout.")
@handle_errors
def parity(export_dir, prompts, decode_steps, targets, no_split, text, allow_pickle, quiet, as_json, **flags):
    """Check every artifact in EXPORT_DIR against the fp32 reference. Writes parity.json/.md/.junit.xml."""
    quiet_libraries()
    from edgepack.errors import ParityError
    from edgepack.parity.harness import check_parity
    from edgepack.parity.report import markdown

    with Progress(quiet or as_json) as progress:
        report = check_parity(
            export_dir,
            prompts_file=prompts,
            decode_steps=decode_steps,
            thresholds=thresholds_from(flags),
            split=not no_split,
            text=text,
            allow_pickle=allow_pickle,
            targets=targets,
            progress=progress,
        )
    if as_json:
        print_json(report.to_json())
    elif not quiet:
        click.echo(markdown(report))
    if not report.passed:
        raise ParityError(report.failure_message(export_dir))
