"""The ``edgepack`` command line: thin click wrappers over the library functions.

Subcommands are imported lazily (``--help`` imports neither torch nor any backend). Library errors
(``EdgepackError``) become one line on stderr and the error's exit code, here and only here.
"""

from __future__ import annotations

import importlib

import click

from edgepack import __version__

# name -> "module:function" under edgepack.cli; each module holds one command (or group).
COMMANDS = {
    "export": ("export_cmd:export", "Export a checkpoint to ExecuTorch, ONNX and Core ML artifacts."),
    "parity": ("parity_cmd:parity", "Check every artifact in an export folder against the reference model."),
    "inspect": ("inspect_cmd:inspect", "Describe a checkpoint and which recipes and targets apply."),
    "recipes": ("recipes_cmd:recipes", "List the shipped quantization recipes, or show one."),
    "validate": ("validate_cmd:validate", "Validate recipe, device profile and config files."),
    "schema": ("schema_cmd:schema", "Print a shipped JSON Schema (e.g. the manifest's)."),
    "bundle": ("bundle_cmd:bundle", "Write per-platform app bundles (and zips) from an export folder."),
    "verify": ("verify_cmd:verify", "Verify a bundle: schema, digests, parity, no secrets."),
    "route": ("route_cmd:route", "Decide on-device or cloud for a request, per the manifest (reference router)."),
    "plan": ("plan_cmd:plan", "Which target, recipe and context fit each device profile."),
    "devices": ("devices_cmd:devices", "List the shipped device profiles, or show one."),
    "matrix": ("matrix_cmd:matrix", "Run a models x recipes x targets export matrix with a cache."),
    "bench": ("bench_cmd:bench", "Benchmark each artifact in its host runtime."),
    "bench-stages": ("bench_stages_cmd:bench_stages", "Wall time and peak memory of each export stage."),
    "quality": ("quality_cmd:quality", "Quality of quantization recipes over a long text, before any export."),
    "report": ("report_cmd:report", "Write report.md and report.html for an export folder or a matrix output."),
    "demo": ("demo_cmd:demo", "Export the built-in default model (SmolLM2-135M) with no hub access."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, (target, _) in COMMANDS.items() if _module_exists(target))

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(f"edgepack.cli.{module}"), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"edgepack.cli.{target.split(':')[0]}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
def main():
    """edgepack: turn a Hugging Face checkpoint of a small LLM into artifacts phones run.

    Pipeline: load -> quantize -> export (ExecuTorch .pte, ONNX, Core ML .mlpackage) -> verify parity
    against the reference model -> package an on-device bundle with a cloud fallback.
    """
