"""The shipped examples stay true: the GitHub Actions workflow validates against GitHub's workflow schema and
runs only edgepack commands and options that exist, on the matrix config it names."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import yaml

from edgepack.cli import main

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "examples" / "github-actions.yml"


def test_the_workflow_validates_against_githubs_schema():
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(WORKFLOW)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _edgepack_calls(workflow: dict) -> list[list[str]]:
    env = workflow["env"]
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                line = re.sub(r"\$\{\{[^}]*\}\}", "X", line)  # expressions -> a placeholder value
                line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), "X"), line)
                # each `edgepack ...` up to the end of its command (a `)`, `&&`, `|` or redirection)
                calls += [shlex.split(m) for m in re.findall(r"(?:^|[\s(])edgepack ([^)&|>\n]*)", line)]
    return calls


def test_every_edgepack_call_names_a_real_command_and_options():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    calls = _edgepack_calls(workflow)
    assert [c[0] for c in calls] == ["matrix", "matrix", "report"]
    ctx = click.Context(main)
    for command, *args in calls:
        params = {opt for p in main.get_command(ctx, command).params for opt in p.opts}
        assert {a for a in args if a.startswith("--")} <= params, (command, args)
    config = REPO / workflow["env"]["MATRIX_CONFIG"]
    assert config.is_file()
    # MATRIX_OUT is where that config writes its cells (its `out`, relative to the config's folder)
    out = (config.parent / yaml.safe_load(config.read_text())["out"]).resolve()
    assert out == (REPO / workflow["env"]["MATRIX_OUT"]).resolve()


def test_the_cells_job_fans_out_what_emit_ci_prints(tmp_path):
    """The export job's matrix is the emitted JSON as is, and each job runs its cell by the emitted `cell` id."""
    import json

    from click.testing import CliRunner

    workflow = yaml.safe_load(WORKFLOW.read_text())
    export = workflow["jobs"]["export"]
    assert export["strategy"]["matrix"] == "${{ fromJSON(needs.cells.outputs.matrix) }}"
    assert any('--cell "${{ matrix.cell }}"' in s.get("run", "") for s in export["steps"])
    result = CliRunner().invoke(main, ["matrix", str(REPO / workflow["env"]["MATRIX_CONFIG"]), "--emit-ci", "github"])
    assert result.exit_code == 0, result.output
    emitted = json.loads(result.output)
    assert emitted["include"] and all({"cell", "key"} <= set(entry) for entry in emitted["include"])
