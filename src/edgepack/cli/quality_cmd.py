"""``edgepack quality MODEL -r RECIPE ...``: each recipe's codes in the eager model over a long text (see
edgepack.quality)."""

from __future__ import annotations

from pathlib import Path

import click

from edgepack.logs import quiet_libraries
from edgepack.cli._common import Progress, handle_errors, print_json


@click.command()
@click.argument("model", required=False)
@click.option("--recipe", "-r", "recipes", multiple=True, help="Recipe name or YAML path (repeat). Default: the "
              "shipped int4 recipes.")  # fmt: skip
@click.option("--text", default="builtin", show_default=True, help="UTF-8 text file, or 'builtin' (~2,000 tokens).")
@click.option("--calibration", type=click.Path(), default=None, help="Calibration text for gptq recipes.")
@click.option("--max-len", type=click.IntRange(16, 8192), default=512, show_default=True,
              help="Tokens per window of the text.")  # fmt: skip
@click.option("--noise", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Break the model's 4-bit grid first: Gaussian noise of this x each row's std on every linear "
                   "weight (the noisy model is then the reference).")  # fmt: skip
@click.option("--genai", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="An onnxruntime-genai builder folder of the same model, measured as an anchor.")
@click.option("--anchor", is_flag=True, help="Build onnxruntime-genai's int4 model of MODEL (in a throwaway venv "
              "under the cache, once) and measure it beside the recipes.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@handle_errors
def quality(model, recipes, text, calibration, max_len, noise, genai, anchor, as_json, quiet):
    """Top-1, KL and perplexity ratio of each recipe's quantized weights against MODEL in fp32, teacher-forced
    over a long text. MODEL defaults to the built-in SmolLM2-135M."""
    quiet_libraries()
    from edgepack.quality import format_table, method_quality, noisy_checkpoint

    with Progress(quiet or as_json) as say:
        if model is None:
            from edgepack.demo import smollm2_checkpoint

            model = str(smollm2_checkpoint())
        if noise is not None:
            model = str(noisy_checkpoint(model, noise))
            say(f"quality: reference with its grid broken (noise {noise:g}): {model}")
        if anchor and genai is None:
            from edgepack.quality import genai_anchor

            genai = genai_anchor(model, say=say)
        info, rows = method_quality(model, list(recipes) or ["int4-block32", "int4-block32-rtn", "int4-mixed"],
                                    text=text, max_len=max_len, calibration=calibration, genai=genai,
                                    say=say)  # fmt: skip
    if as_json:
        print_json({**info, "rows": [r.to_json() for r in rows]})
    else:
        click.echo(format_table(info, rows))
        if noise is not None:
            click.echo(f"reference (grid broken): {model}")
