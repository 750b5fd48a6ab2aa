"""Wall time and peak memory of each pipeline stage (``edgepack bench-stages``, ``make bench-4b``).

Each stage runs as its own ``edgepack`` process, exactly as a user runs it (``export --target T --no-parity``,
then ``parity``), watched by a sampler that sums the RSS of the process tree every 0.1 s. A stage whose memory
passes ``limit_gb`` is killed and reported as killed: a process that exhausts the machine's memory takes
everything on it down, so the limit is how a benchmark of a model that does not fit can still print its table.

``ministral3-3b`` is a random-weight checkpoint with Ministral 3 3B's exact text configuration (hidden 3072, 26
layers, 32 heads / 8 KV heads, head_dim 128, intermediate 9216, vocab 131072, tied embeddings, YaRN rope with the
Llama-4 query scaling), written tensor by tensor in bf16 as sharded safetensors, never holding the model, with the
real tekken tokenizer from mistral-common's wheel. It is built once into the edgepack cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1 << 30
PRESETS = {
    "ministral3-3b": {
        "architectures": ["Ministral3ForCausalLM"], "model_type": "ministral3", "dtype": "bfloat16",
        "hidden_size": 3072, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 131072, "tie_word_embeddings": True,
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-5, "hidden_act": "silu", "sliding_window": None,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11,
        "rope_parameters": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 16384,
                            "rope_theta": 1000000.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
                            "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
    },
}  # fmt: skip
SHARD_BYTES = 2 * GIB


@dataclass
class StageResult:
    stage: str
    seconds: float
    peak_bytes: int
    status: str  # "ok", "killed past N GB", "failed (exit N)"
    artifact_bytes: int = 0


# --- the random checkpoint -----------------------------------------------------------------------------------


def random_checkpoint(preset: str, cache: Path | None = None, progress=print) -> Path:
    """The cached random checkpoint of ``preset``; built on first use, one tensor in memory at a time."""
    from edgepack.paths import cache_dir

    config = PRESETS[preset]
    out = (cache or cache_dir()) / "random" / preset
    if (out / "model.safetensors.index.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress(f"bench-stages: writing the random {preset} checkpoint (bf16, sharded) to {out}")
    _write_shards(tmp, _tensor_shapes(config))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    import mistral_common

    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json", tmp / "tekken.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    h, d, i = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        })  # fmt: skip
    shapes["model.norm.weight"] = (h,)
    return shapes


def _write_shards(out: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Shards of <= SHARD_BYTES, each written from tensors made just for it (bf16, N(0, 0.02); norms 1)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    groups, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    groups.append(current)
    weight_map = {}
    for k, names in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: _random(shapes[n], n, gen) for n in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": sum(math.prod(s) * 2 for s in shapes.values())}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")


def _random(shape, name: str, gen):
    import torch

    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


# --- the stages ----------------------------------------------------------------------------------------------


def run_stages(model: Path, out: Path, *, recipe: str, max_seq_len: int, targets: list[str], limit_gb: float,
               parity: bool = True, progress=print) -> list[StageResult]:  # fmt: skip
    """Export each target in its own process, then check its parity in another; one result per stage."""
    results = []
    edgepack = [sys.executable, "-m", "edgepack"]
    for target in targets:
        folder = out / target
        cmd = edgepack + ["export", str(model), "--target", target, "--recipe", recipe, "--out", str(folder),
                          "--max-seq-len", str(max_seq_len), "--no-parity", "--force", "--quiet"]  # fmt: skip
        progress(f"bench-stages: export {target}")
        result = watch(f"export {target}", cmd, limit_gb)
        result.artifact_bytes = _artifact_bytes(folder / target) if result.status == "ok" else 0
        results.append(result)
        if parity and result.status == "ok":
            progress(f"bench-stages: parity {target}")
            results.append(watch(f"parity {target}", edgepack + ["parity", str(folder), "--quiet"], limit_gb))
    return results


def watch(stage: str, cmd: list[str], limit_gb: float) -> StageResult:
    """Run ``cmd``; sample the RSS of its process tree; kill the tree past ``limit_gb``."""
    limit = int(limit_gb * GIB)
    # A child's ru_maxrss is at least this process's high-water mark at the fork (Linux carries the forked
    # memory's peak through exec), so it tells the stage's own peak only when it is above that.
    inherited = _vm_hwm(os.getpid())
    start = time.perf_counter()
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty stage must never block on a full pipe
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    peak, killed, high_water = 0, False, {}
    while True:
        # wait4 reaps the stage with its own rusage: ru_maxrss is its peak even when it ends between samples.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if usage.ru_maxrss * 1024 > inherited:
                peak = max(peak, usage.ru_maxrss * 1024)
            break
        rss = tree_rss(proc.pid, high_water)
        # The kernel's per-process high-water marks catch what a 0.1 s sampler misses; their sum bounds the
        # tree's peak from above.
        peak = max(peak, rss, sum(high_water.values()))
        if rss > limit and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if killed:
        status = f"killed past {limit_gb:g} GB"
    elif proc.returncode not in (0, 1):  # parity exits 1 when it fails: the stage itself ran
        log.seek(0)
        tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
        status = f"failed (exit {proc.returncode}{': ' + tail[0][:120] if tail else ''})"
    else:
        status = "ok" if proc.returncode == 0 else "ok (parity failed)"
    log.close()
    return StageResult(stage, round(seconds, 1), peak, status)


def tree_rss(pid: int, high_water: dict[int, int] | None = None) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc); ``high_water`` collects each process's
    peak (VmHWM)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
        if high_water is not None:
            high_water[p] = max(high_water.get(p, 0), _vm_hwm(p))
    return total


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _artifact_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def checkpoint_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in Path(model).glob("*.safetensors"))


def format_table(results: list[StageResult], model_bytes: int, params: int) -> str:
    lines = [
        "| stage | wall s | peak RSS GB | peak / checkpoint | artifact GB | bytes / parameter | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        art = f"{r.artifact_bytes / GIB:.2f}" if r.artifact_bytes else ""
        per_param = f"{r.artifact_bytes / params:.3f}" if r.artifact_bytes and params else ""
        lines.append(f"| {r.stage} | {r.seconds:.1f} | {r.peak_bytes / GIB:.2f} | {r.peak_bytes / model_bytes:.2f} "
                     f"| {art} | {per_param} | {r.status} |")  # fmt: skip
    return "\n".join(lines)


def to_json(results: list[StageResult], model: Path, model_bytes: int, params: int) -> dict:
    return {"model": str(model), "checkpoint_bytes": model_bytes, "num_parameters": params,
            "stages": [asdict(r) for r in results]}  # fmt: skip
