"""The matrix on Ray and on a shared cache.

The store tests (publication, a half-published cell, fetch) run in the default tier. The ``ray`` tests start a
real local Ray cluster in this process (``ray.init(num_cpus=2)``, no mocks) and run tiny exports on it; they sit
behind the ``ray`` marker (``pytest -m ray``; CI runs it after the default tier) because Ray's start-up and its
workers' imports take most of a minute.
"""

from __future__ import annotations

import hashlib
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
from edgepack.matrix import CellJob, SharedStore, load_matrix, run_cell, run_matrix

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    return {"llama": tiny_checkpoint("llama"), "qwen": tiny_checkpoint("qwen2")}


def write_config(folder: Path, models: dict, out: str = "out", **extra) -> Path:
    config = {"models": [{"path": str(p), "name": n} for n, p in models.items()], "recipes": ["int8-weight"],
              "targets": ["onnx"], "devices": ["iphone-13"], "out": out, "max_seq_len": 32, **extra}  # fmt: skip
    path = folder / f"{out}.yaml"
    path.write_text(json.dumps(config))
    return path


class LoggingRunner:
    """Writes a cell's folder atomically and logs each execution (pid, cell) to a file every process appends to.

    ``die_once``: the worker running that cell's first attempt exits at once (a node lost mid-cell), after writing
    half its folder; ``die_always``: every attempt does. ``sleep``: seconds each cell takes."""

    def __init__(self, log: Path, die_once: str | None = None, sleep: float = 0.0, die_always: str | None = None):
        self.log, self.die_once, self.sleep, self.die_always = str(log), die_once, sleep, die_always

    def __call__(self, cell, out: Path, options: dict) -> dict:
        with open(self.log, "a") as log:
            log.write(f"{os.getpid()} {cell.id}\n")
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "cell.txt").write_text(cell.id)
        flag = Path(self.log + f".{cell.id.replace('/', '_')}.died")
        if cell.id == self.die_once and not flag.exists() or cell.id == self.die_always:
            flag.touch()
            os._exit(1)
        time.sleep(self.sleep)
        (tmp / "weights.bin").write_bytes(cell.id.encode() * 1000)
        tmp.rename(out)
        return {"recipe": options["recipe"]}


def executions(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


def digests(folder: Path) -> dict[str, str]:
    """Every file's sha256; an artifact record without its wall time (``export_seconds``)."""
    out = {}
    for p in sorted(f for f in folder.rglob("*") if f.is_file()):
        data = p.read_bytes()
        if p.name == "artifact.json":
            record = json.loads(data)
            record.pop("export_seconds")
            data = json.dumps(record, sort_keys=True).encode()
        out[p.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


# --- the shared store (default tier) -----------------------------------------------------------------------


def job(tmp_path: Path, models: dict, cache: str | None, in_place: bool) -> CellJob:
    matrix = load_matrix(write_config(tmp_path, models))
    cell = matrix.cells()[0]
    return CellJob(cell, "k" * 64, matrix.out, {"recipe": "int8-weight"}, memory=1, cpus=1, cache=cache,
                   in_place=in_place)  # fmt: skip


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_cell_published_to_a_shared_cache_is_fetched_whole(tmp_path, models, scheme):
    cache = f"{scheme}{tmp_path / 'shared'}"
    result = run_cell(job(tmp_path, models, cache, in_place=False), LoggingRunner(tmp_path / "log"))
    assert result.row["status"] == "exported" and not result.in_place
    store = SharedStore(cache)
    record = store.lookup("k" * 64)
    assert record["files"] == {"cell.txt": 22, "weights.bin": 22000}
    assert not list((tmp_path / "out").rglob("cell.txt"))  # exported on the "node", not in the driver's out
    dest = tmp_path / "out" / record["out"]
    store.fetch(record, dest)
    assert (dest / "weights.bin").read_bytes() == b"llama/int8-weight/onnx" * 1000
    assert sorted(p.name for p in dest.iterdir()) == ["cell.txt", "weights.bin"]


def test_files_without_a_record_are_not_a_cell(tmp_path, models):
    """An attempt that died after uploading part of its files: no record, so the cell is not found (and reruns)."""
    cache = tmp_path / "shared"
    obj = cache / "objects" / ("k" * 64) / "deadbeef0000"
    obj.mkdir(parents=True)
    (obj / "cell.txt").write_text("half")
    assert SharedStore(str(cache)).lookup("k" * 64) is None
    # a record whose files were removed since is no cell either
    result = run_cell(job(tmp_path, models, str(cache), in_place=False), LoggingRunner(tmp_path / "log"))
    store = SharedStore(str(cache))
    assert store.lookup("k" * 64)["object"] == result.record["object"]
    import shutil

    shutil.rmtree(cache / result.record["object"])
    assert store.lookup("k" * 64) is None


def test_a_truncated_file_is_refused_when_fetched(tmp_path, models):
    cache = tmp_path / "shared"
    result = run_cell(job(tmp_path, models, str(cache), in_place=False), LoggingRunner(tmp_path / "log"))
    (cache / result.record["object"] / "weights.bin").write_bytes(b"x")
    dest = tmp_path / "out" / "cells" / "llama"
    with pytest.raises(ExportError, match="weights.bin is 1 bytes, its record says 22000"):
        SharedStore(str(cache)).fetch(result.record, dest)
    assert not dest.exists()  # nothing partial in OUT


def test_a_second_matrix_on_the_same_cache_exports_nothing(tmp_path, models):
    """Local executor, shared cache: matrix B (another out folder) takes matrix A's cells from the cache."""
    cache = f"file://{tmp_path / 'shared'}"
    log = tmp_path / "log"
    first = run_matrix(load_matrix(write_config(tmp_path, models, out="a")), runner=LoggingRunner(log), cache=cache)
    assert first["counts"]["exported"] == 2 and len(executions(log)) == 2
    second = run_matrix(load_matrix(write_config(tmp_path, models, out="b")), runner=LoggingRunner(log), cache=cache)
    assert second["counts"] == {"exported": 0, "cached": 2, "parity-failed": 0, "failed": 0}
    assert len(executions(log)) == 2
    for row in second["cells"]:
        assert digests(tmp_path / "b" / row["out"]) == digests(tmp_path / "a" / row["out"])
    assert (tmp_path / "b" / "cache" / f"{second['cells'][0]['key']}.json").is_file()  # recorded in OUT too


def test_a_relative_cache_path_is_handed_to_workers_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = SharedStore("shared/edgepack")
    assert store.url == f"file://{tmp_path}/shared/edgepack"


def test_an_unknown_cache_protocol_is_one_line(tmp_path, models):
    config = write_config(tmp_path, models)
    result = CliRunner().invoke(main, ["matrix", str(config), "--cache", "nosuch://bucket/edgepack"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --cache: cannot open nosuch://bucket/edgepack")
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, models):
    config = write_config(tmp_path, models)
    code = ("import sys; sys.modules['ray'] = None\n"  # what an environment without Ray sees
            "from edgepack.cli import main; main(['matrix', sys.argv[1], '--executor', 'ray'])")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: --executor ray: Ray is not installed: pip install 'edgepack[ray]'"
    assert not (tmp_path / "out" / "cells").exists()


def test_address_without_ray_is_refused(tmp_path, models):
    result = CliRunner().invoke(main, ["matrix", str(write_config(tmp_path, models)), "--address", "host:6379"])
    assert result.exit_code == 2, result.output
    assert result.output == "error: --address: names a Ray cluster; add --executor ray\n"


def test_a_fully_cached_matrix_starts_no_ray_cluster(tmp_path, models):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already up in this process")
    config = write_config(tmp_path, models)
    run_matrix(load_matrix(config), runner=LoggingRunner(tmp_path / "log"))
    summary = run_matrix(load_matrix(config), runner=LoggingRunner(tmp_path / "log"), executor="ray")
    assert summary["counts"]["cached"] == 2 and not ray.is_initialized()


def test_builtin_models_get_a_plain_cell_name(tmp_path):
    (tmp_path / "m.yaml").write_text(json.dumps({"models": ["builtin:smollm2"], "recipes": ["int8-weight"],
                                                 "targets": ["onnx"]}))  # fmt: skip
    assert [c.id for c in load_matrix(tmp_path / "m.yaml").cells()] == ["smollm2/int8-weight/onnx"]


# --- on a real local Ray cluster (-m ray) ------------------------------------------------------------------

ray_tier = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        _init(ray)
    yield ray
    ray.shutdown()


def _init(ray, **options):
    # The test runners live in this folder: Ray's workers import them by name.
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20,
             runtime_env={"env_vars": env}, **options)  # fmt: skip


@ray_tier
def test_ray_runs_the_same_cells_as_the_local_executor(tmp_path, models, ray_cluster):
    """Real exports (int8 ONNX, parity on) of two tiny models: the same rows, parity figures and files."""
    local = run_matrix(load_matrix(write_config(tmp_path, models, out="local")))
    start = time.perf_counter()
    on_ray = run_matrix(load_matrix(write_config(tmp_path, models, out="ray")), executor="ray")
    print(f"ray: {time.perf_counter() - start:.1f}s")
    assert on_ray["counts"] == local["counts"] == {"exported": 2, "cached": 0, "parity-failed": 0, "failed": 0}
    for a, b in zip(local["cells"], on_ray["cells"]):
        assert (a["cell"], a["key"], a["status"], a["fits"]) == (b["cell"], b["key"], b["status"], b["fits"])
        assert a["result"]["parity"] == b["result"]["parity"]
        assert digests(tmp_path / "local" / a["out"]) == digests(tmp_path / "ray" / b["out"])
    again = run_matrix(load_matrix(write_config(tmp_path, models, out="ray")), executor="ray")
    assert again["counts"]["cached"] == 2 and again["counts"]["exported"] == 0


@ray_tier
def test_ray_with_a_shared_cache_and_a_dead_worker(tmp_path, models, ray_cluster):
    """Each cell runs on a worker, is published to the cache and copied into OUT; a worker that dies mid-cell
    (after writing half its folder) is retried by Ray and the cell comes out whole, published once."""
    cache = f"file://{tmp_path / 'shared'}"
    log = tmp_path / "log"
    runner = LoggingRunner(log, die_once="qwen/int8-weight/onnx")
    summary = run_matrix(load_matrix(write_config(tmp_path, models)), runner=runner, executor="ray", cache=cache)
    assert summary["counts"]["exported"] == 2, summary["cells"]
    assert sorted(executions(log)) == ["llama/int8-weight/onnx", "qwen/int8-weight/onnx", "qwen/int8-weight/onnx"]
    assert os.getpid() not in {int(line.split()[0]) for line in log.read_text().splitlines()}
    for row in summary["cells"]:
        assert digests(tmp_path / "out" / row["out"]) == {"cell.txt": _sha(row["cell"].encode()),
                                                          "weights.bin": _sha(row["cell"].encode() * 1000)}  # fmt: skip
    records = list((tmp_path / "shared" / "cache").glob("*.json"))
    assert len(records) == 2
    rerun = run_matrix(load_matrix(write_config(tmp_path, models, out="again")), runner=runner, executor="ray",
                       cache=cache)  # fmt: skip
    assert rerun["counts"]["cached"] == 2 and len(executions(log)) == 3


@ray_tier
def test_a_cell_whose_worker_dies_every_time_fails_alone(tmp_path, models, ray_cluster):
    """Past Ray's retries the cell is a failed row (not cached: the next run tries it again); the other cell lands."""
    from edgepack.matrix.ray_executor import RETRIES

    log = tmp_path / "log"
    runner = LoggingRunner(log, die_always="qwen/int8-weight/onnx")
    summary = run_matrix(load_matrix(write_config(tmp_path, models)), runner=runner, executor="ray")
    rows = {r["cell"]: r for r in summary["cells"]}
    assert rows["llama/int8-weight/onnx"]["status"] == "exported"
    assert rows["qwen/int8-weight/onnx"]["status"] == "failed"
    assert "Error" in rows["qwen/int8-weight/onnx"]["error"]
    assert executions(log).count("qwen/int8-weight/onnx") == 1 + RETRIES
    failed = rows["qwen/int8-weight/onnx"]
    assert not (tmp_path / "out" / failed["out"]).exists()  # only the dead attempts' own temporary folder
    assert not (tmp_path / "out" / "cache" / f"{failed['key']}.json").exists()


@ray_tier
def test_a_cell_asking_more_cpus_than_any_node_is_refused(tmp_path, models, ray_cluster):
    with pytest.raises(ConfigError) as info:
        run_matrix(load_matrix(write_config(tmp_path, models, cpus_per_cell=3)), runner=LoggingRunner(tmp_path / "l"),
                   executor="ray")  # fmt: skip
    assert info.value.problems[0] == "cell llama/int8-weight/onnx asks 3 CPUs (cpus_per_cell), more than any Ray node has (2)"
    assert not (tmp_path / "l").exists()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


KILL_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[3])
from test_matrix_ray import LoggingRunner, _init
import ray
from edgepack.matrix import load_matrix, run_matrix

_init(ray)
run_matrix(load_matrix(sys.argv[1]), runner=LoggingRunner(sys.argv[2], sleep=1.5), executor="ray",
           cache=sys.argv[4])
"""


@ray_tier
def test_killed_driver_resumes_with_only_the_missing_cells(tmp_path, tiny_checkpoint, ray_cluster):
    models = {f"m{i}": tiny_checkpoint("llama", num_hidden_layers=1, vocab_size=130 + i) for i in range(6)}
    config = write_config(tmp_path, models)
    log = tmp_path / "log"
    cache = tmp_path / "shared"
    script = tmp_path / "driver.py"
    script.write_text(KILL_SCRIPT)
    # its own process group: killing the group takes the driver's local Ray cluster with it, as a lost machine would
    proc = subprocess.Popen([sys.executable, str(script), str(config), str(log), str(TESTS), str(cache)],
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 180
    while len(list((cache / "cache").glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    published = {json.loads(p.read_text())["cell"] for p in (cache / "cache").glob("*.json")}
    assert 2 <= len(published) < 6
    before = len(executions(log))
    summary = run_matrix(load_matrix(config), runner=LoggingRunner(log), executor="ray", cache=str(cache))
    rerun = executions(log)[before:]
    assert summary["counts"]["cached"] == len(published)
    assert sorted(rerun) == sorted(set(f"{m}/int8-weight/onnx" for m in models) - published)


@ray_tier
def test_a_cell_larger_than_every_node_is_refused_before_anything_runs(tmp_path, models, ray_cluster):
    ray = ray_cluster
    ray.shutdown()
    try:
        _init(ray, _memory=500 << 20)  # a node offering 0.5 GB: less than any cell's estimate
        log = tmp_path / "log"
        with pytest.raises(ConfigError) as info:
            run_matrix(load_matrix(write_config(tmp_path, models)), runner=LoggingRunner(log), executor="ray")
        assert len(info.value.problems) == 2
        assert info.value.problems[0].startswith("cell llama/int8-weight/onnx needs about ")
        assert "more than the largest Ray node offers (0.5 GB)" in info.value.problems[0]
        assert executions(log) == [] and not (tmp_path / "out" / "cells").exists()
        result = CliRunner().invoke(main, ["matrix", str(write_config(tmp_path, models)), "--executor", "ray"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "error: --executor ray: 2 problems" in result.output
    finally:
        ray.shutdown()
        _init(ray)
