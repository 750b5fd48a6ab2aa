"""The export matrix: cells, cache, resume after an interruption, shards and the CI matrix.

The runner is injected (``run_matrix(runner=...)``) so that tests count executions exactly; the real pipeline
runs in ``test_real_exports_are_cached``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import ConfigError, ExportError
from edgepack.matrix import cell_keys, load_matrix, parse_shard, run_matrix, select

CELLS = [
    "llama/int4-block32/executorch", "llama/int4-block32/onnx", "llama/int8-weight/executorch",
    "llama/int8-weight/onnx", "qwen/int4-block32/executorch", "qwen/int4-block32/onnx",
    "qwen/int8-weight/executorch", "qwen/int8-weight/onnx",
]  # fmt: skip


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    return {"llama": tiny_checkpoint("llama"), "qwen": tiny_checkpoint("qwen2")}


def write_config(folder: Path, models: dict, **extra) -> Path:
    config = {
        "models": [{"path": str(p), "name": n} for n, p in models.items()],
        "recipes": ["int4-block32", "int8-weight"],
        "targets": ["executorch", "onnx"],
        "devices": ["iphone-13"],
        "out": "out",
        **extra,
    }
    path = folder / "matrix.yaml"
    path.write_text(json.dumps(config))
    return path


class CountingRunner:
    """Stands in for the pipeline: writes a cell's folder atomically, records each execution."""

    def __init__(self, interrupt_at: int | None = None, fail: str | None = None):
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at
        self.fail = fail

    def __call__(self, cell, out: Path, options: dict) -> dict:
        self.calls.append(cell.id)
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C half-way through the matrix
        if cell.id == self.fail:
            raise ExportError(f"backend failed on {cell.id}")
        write_cell(out, cell.id)
        return {"recipe": options["recipe"]}


def write_cell(out: Path, text: str) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True)
    (tmp / "cell.txt").write_text(text)
    tmp.rename(out)


def test_a_second_run_executes_no_export(tmp_path, models):
    matrix = load_matrix(write_config(tmp_path, models))
    first = CountingRunner()
    summary = run_matrix(matrix, runner=first)
    assert sorted(first.calls) == CELLS
    assert summary["counts"] == {"exported": 8, "cached": 0, "parity-failed": 0, "failed": 0}
    second = CountingRunner()
    summary = run_matrix(load_matrix(write_config(tmp_path, models)), runner=second)
    assert second.calls == []
    assert summary["counts"]["cached"] == 8
    assert json.loads((tmp_path / "out" / "matrix.json").read_text())["counts"]["cached"] == 8


def test_a_changed_input_reruns_only_its_cells(tmp_path, models):
    run_matrix(load_matrix(write_config(tmp_path, models)), runner=CountingRunner())
    # A new recipe digest (the same rules, saved as a file under another name) invalidates just its cells.
    recipe = tmp_path / "int8-copy.yaml"
    recipe.write_text((Path(__file__).parents[1] / "recipes" / "int8-weight.yaml").read_text().replace(
        "name: int8-weight", "name: int8-copy"))  # fmt: skip
    runner = CountingRunner()
    run_matrix(
        load_matrix(write_config(tmp_path, models, recipes=["int4-block32", "int8-copy.yaml"])), runner=runner
    )
    assert sorted(runner.calls) == [c.replace("int8-weight", "int8-copy.yaml") for c in CELLS if "int8" in c]


def test_interrupted_half_way_a_rerun_finishes_only_what_was_missing(tmp_path, models):
    matrix = load_matrix(write_config(tmp_path, models))
    interrupted = CountingRunner(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_matrix(matrix, runner=interrupted)
    done = interrupted.calls[:3]
    rerun = CountingRunner()
    summary = run_matrix(matrix, runner=rerun)
    assert sorted(rerun.calls) == sorted(set(CELLS) - set(done))
    assert {r["cell"] for r in summary["cells"] if r["status"] == "cached"} == set(done)


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from edgepack.matrix import load_matrix, run_matrix

def slow(cell, out, options):
    with open(sys.argv[2], "a") as log:
        log.write(cell.id + "\\n")
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    time.sleep(0.4)  # killed here, the cell leaves only a partial folder
    tmp.rename(out)
    return {}

run_matrix(load_matrix(sys.argv[1]), runner=slow)
"""


def test_killed_process_resumes_with_only_the_missing_cells(tmp_path, models):
    config = write_config(tmp_path, models)
    log = tmp_path / "executions.log"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(config), str(log)])
    cache = tmp_path / "out" / "cache"
    deadline = time.time() + 60
    while len(list(cache.glob("*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(cache.glob("*.json")))
    started = log.read_text().split()
    assert 3 <= finished < 8
    rerun = CountingRunner()
    summary = run_matrix(load_matrix(config), runner=rerun)
    assert summary["counts"]["cached"] == finished
    assert len(rerun.calls) == 8 - finished
    assert set(rerun.calls) | set(started) == set(CELLS)


def test_failures_are_reported_not_cached_and_retried(tmp_path, models):
    matrix = load_matrix(write_config(tmp_path, models))
    summary = run_matrix(matrix, runner=CountingRunner(fail="qwen/int8-weight/onnx"))
    failed = [r for r in summary["cells"] if r["status"] == "failed"]
    assert [(r["cell"], r["error"]) for r in failed] == [
        ("qwen/int8-weight/onnx", "backend failed on qwen/int8-weight/onnx")
    ]
    retry = CountingRunner()
    run_matrix(matrix, runner=retry)
    assert retry.calls == ["qwen/int8-weight/onnx"]


def test_shards_partition_the_cells_and_ci_matrix_carries_cache_keys(tmp_path, models):
    matrix = load_matrix(write_config(tmp_path, models))
    cells = matrix.cells()
    shards = [select(cells, parse_shard(f"{i}/3")) for i in (1, 2, 3)]
    assert sorted(c.id for s in shards for c in s) == CELLS
    assert [len(s) for s in shards] == [3, 3, 2]
    runner = CliRunner()
    result = runner.invoke(
        main, ["matrix", str(tmp_path / "matrix.yaml"), "--emit-ci", "github", "--shard", "2/3"]
    )
    assert result.exit_code == 0, result.output
    include = json.loads(result.output)["include"]
    keys = cell_keys(matrix, shards[1])
    assert include == [{"cell": c.id, "model": c.model, "recipe": c.recipe, "target": c.target,
                        "key": f"edgepack-{keys[c.id]}"} for c in shards[1]]  # fmt: skip
    for bad in ("0/3", "4/3", "x"):
        res = runner.invoke(main, ["matrix", str(tmp_path / "matrix.yaml"), "--shard", bad])
        assert res.exit_code == 2 and "--shard" in res.output


def test_config_errors_are_reported_at_once(tmp_path, models):
    path = write_config(
        tmp_path, models, recipes=["int4-block32", "int3"], targets=["onnx", "tflite"], worker=2
    )
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    assert (
        "worker: unknown key; allowed keys: cpus_per_cell, devices, max_seq_len, models, out, parity, recipes, targets, workers"
        in str(info.value)
    )
    path = write_config(
        tmp_path, models, recipes=["int4-block32", "int3"], targets=["onnx", "tflite"], devices=["nokia"]
    )
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    assert len(info.value.problems) == 3
    text = str(info.value)
    assert (
        "unknown recipe 'int3'" in text
        and "unknown target 'tflite'" in text
        and "unknown device 'nokia'" in text
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "unknown target 'tflite'" in result.output


def test_example_matrix_validates():
    example = Path(__file__).parents[1] / "examples" / "matrix.yaml"
    matrix = load_matrix(example)
    assert len(matrix.cells()) == 4


def logging_runner(cell, out: Path, options: dict) -> dict:
    """Picklable for worker processes: logs each execution in the matrix's output folder."""
    import torch

    with open(out.parents[3] / "executions.log", "a") as log:
        log.write(f"{os.getpid()} {cell.id} {torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')}\n")
    write_cell(out, cell.id)
    return {}


def test_worker_processes_run_each_cell_once(tmp_path, models):
    matrix = load_matrix(write_config(tmp_path, models, workers=2))
    summary = run_matrix(matrix, runner=logging_runner)
    lines = (tmp_path / "out" / "executions.log").read_text().split("\n")[:-1]
    assert sorted(line.split()[1] for line in lines) == CELLS
    assert os.getpid() not in {int(line.split()[0]) for line in lines}  # ran in workers, not here
    share = str(max(1, os.cpu_count() // 2))  # each worker its share of the cores, not one thread per core
    assert {tuple(line.split()[2:]) for line in lines} == {(share, share)}
    assert summary["counts"]["exported"] == 8
    run_matrix(matrix, runner=logging_runner)
    assert len((tmp_path / "out" / "executions.log").read_text().split("\n")[:-1]) == 8


def test_real_exports_are_cached(tmp_path, models):
    """The default runner: the real pipeline exports two tiny models to ONNX once; the rerun exports nothing."""
    config = write_config(
        tmp_path, models, recipes=["int8-weight"], targets=["onnx"], parity=False, max_seq_len=32
    )
    first = run_matrix(load_matrix(config))
    assert first["counts"] == {"exported": 2, "cached": 0, "parity-failed": 0, "failed": 0}, first["cells"]
    records = {}
    for row in first["cells"]:
        folder = tmp_path / "out" / row["out"]
        assert (folder / "onnx" / "model.onnx").is_file()
        records[row["cell"]] = (folder / "export.json").stat().st_mtime_ns
        assert row["fits"] == {"iphone-13": 32}  # the artifact's whole max_seq_len fits a 4 GB phone
    second = run_matrix(load_matrix(config))
    assert second["counts"]["cached"] == 2 and second["counts"]["exported"] == 0
    assert {
        r["cell"]: (tmp_path / "out" / r["out"] / "export.json").stat().st_mtime_ns for r in second["cells"]
    } == records
    # `edgepack report` on the matrix output (what the CI example's last job runs) finds every cell
    result = CliRunner().invoke(main, ["report", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "report.md").read_text()
    assert all(f"{cell}/onnx" in table for cell in records)


def test_the_example_matrix_names_the_builtin_model_wherever_the_cache_is(tiny_checkpoint, tmp_path, monkeypatch):
    """examples/matrix.yaml holds no cache path: ``builtin:smollm2`` resolves through $EDGEPACK_CACHE."""
    import edgepack.demo
    from edgepack.checkpoint import resolve

    example = Path(__file__).resolve().parents[1] / "examples" / "matrix.yaml"
    assert "~/.cache" not in example.read_text()
    matrix = load_matrix(example)
    assert [m.path for m in matrix.config.models] == ["builtin:smollm2"]
    monkeypatch.setattr(edgepack.demo, "smollm2_checkpoint", lambda: tiny_checkpoint("llama"))
    checkpoint = resolve("builtin:smollm2")
    assert checkpoint.path == tiny_checkpoint("llama") and checkpoint.spec.name == "llama"


# Peak RSS (GiB) measured by `edgepack bench-stages` (README, "Memory"): (target, stage) -> [(parameters, peak)].
MEASURED_PEAKS = {
    ("onnx", "export"): [(0.135e9, 1.32), (3.43e9, 5.47)], ("onnx", "parity"): [(0.135e9, 1.45), (3.43e9, 6.09)],
    ("coreml", "export"): [(0.135e9, 2.26), (3.43e9, 4.89)], ("coreml", "parity"): [(0.135e9, 2.36), (3.43e9, 11.81)],
    ("executorch", "export"): [(0.135e9, 1.85), (3.43e9, 7.72)], ("executorch", "parity"): [(3.43e9, 7.92)],
    ("mlx", "export"): [(0.135e9, 0.62), (3.43e9, 4.27)], ("mlx", "parity"): [(0.135e9, 1.31)],
    ("gguf", "export"): [(0.135e9, 1.10), (3.43e9, 3.85)], ("gguf", "parity"): [(0.135e9, 1.32)],
}  # fmt: skip


@pytest.mark.parametrize("target", ["onnx", "coreml", "executorch", "mlx", "gguf"])
def test_the_memory_estimate_covers_every_measured_peak_without_doubling_it(target):
    """Ray schedules cells by this estimate: below a measured peak it would co-schedule cells that do not fit one
    node; far above it, it would leave nodes idle."""
    from edgepack.backends import get_backend

    cost = get_backend(target).export_cost
    terms = {"export": (cost.base_bytes, cost.per_weight_byte),
             "parity": (cost.parity_base_bytes, cost.parity_per_weight_byte)}  # fmt: skip
    for stage, (base, per_byte) in terms.items():
        for params, peak_gib in MEASURED_PEAKS[(target, stage)]:
            estimate = (base + per_byte * 2 * params) / (1 << 30)
            assert peak_gib <= estimate < 2 * peak_gib + 1, (stage, params, estimate)
            assert cost.peak(int(2 * params), parity=stage == "parity") >= estimate * (1 << 30) - 1


def test_cell_memory_is_the_targets_estimate_for_the_models_size(tmp_path, models):
    from edgepack.backends import get_backend
    from edgepack.checkpoint import resolve
    from edgepack.matrix import cell_memory
    from edgepack.matrix.config import checkpoints

    matrix = load_matrix(write_config(tmp_path, models, parity=False))
    cells = matrix.cells()
    memory = cell_memory(matrix, cells, checkpoints(cells))
    llama = resolve(models["llama"]).num_parameters
    assert memory["llama/int4-block32/onnx"] == get_backend("onnx").export_cost.peak(2 * llama, parity=False)
    assert memory["llama/int4-block32/executorch"] > memory["llama/int4-block32/onnx"]


def test_worker_processes_print_no_library_noise(tmp_path, models):
    """`edgepack matrix --workers 2`: the spawned workers are as quiet as the driver (no torch/torchao warnings)."""
    config = write_config(tmp_path, models, recipes=["int8-weight"], targets=["onnx"], parity=False, max_seq_len=16)
    proc = subprocess.run([sys.executable, "-m", "edgepack", "matrix", str(config), "--workers", "2"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("2 cells: 2 exported")
    noise = [line for line in proc.stderr.splitlines() if "matrix:" not in line]
    assert noise == []
