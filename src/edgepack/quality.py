"""Quality of quantization methods, before any export: each recipe's codes dequantized into the eager model,
teacher-forced over a long text against the fp32 model (``edgepack quality``, ``make quality``).

Rows: each recipe's code book (what every backend packs); optionally an anchor, onnxruntime-genai's builder int4 folder,
run in onnxruntime over the same windows. Figures: top-1 agreement, KL(fp32 || quantized), perplexity ratio.

``noisy_checkpoint`` breaks a checkpoint's 4-bit grid (SmolLM2's weights come from a Q4_1 GGUF and already sit on
one, which flatters methods that re-find it): every linear weight gets Gaussian noise of ``sigma`` times its
row's standard deviation, and the result is the new fp32 reference.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NOISE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json")  # fmt: skip


@dataclass
class Row:
    name: str  # recipe name, or the anchor's
    method: str
    seconds: float  # computing the codes (0 when cached), or building the anchor
    metrics: dict

    def to_json(self) -> dict:
        return asdict(self)


def method_quality(model: str | Path, recipes: list, *, text: str | Path = "builtin", max_len: int = 512,
                   calibration=None, genai: Path | None = None,
                   say=lambda m: None) -> tuple[dict, list[Row]]:  # fmt: skip
    """({"model", "text", "tokens", "ppl_reference"}, one Row per recipe and anchor)."""
    from edgepack.checkpoint import resolve
    from edgepack.codes import codes_for
    from edgepack.codes.calibration import load_calibration
    from edgepack.parity.text import eager_logits, load_text, text_metrics
    from edgepack.recipes import Recipe, load_recipe
    from edgepack.tokenizer import DeviceTokenizer
    from edgepack.weights import load_layer_streamed

    checkpoint = resolve(model)
    if isinstance(calibration, (str, Path)):
        calibration = load_calibration(calibration)
    tokenizer = DeviceTokenizer(checkpoint.path)
    long_text = load_text(text, tokenizer, max_len)
    say(f"quality: fp32 reference over {long_text.tokens} tokens")
    reference = eager_logits(load_layer_streamed(checkpoint, "float32", "eager"), long_text.windows)
    rows = []
    for recipe in recipes:
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        cal = calibration if recipe.method.calibrated else None
        start = time.perf_counter()
        book = codes_for(checkpoint, recipe, tokenizer=tokenizer, calibration=cal, say=say)
        seconds = time.perf_counter() - start
        model_q = load_layer_streamed(checkpoint, "float32", "eager", book.transform(recipe))
        got = eager_logits(model_q, long_text.windows)
        rows.append(Row(recipe.name, recipe.method.describe(), round(seconds, 1),
                        text_metrics(reference, got, long_text.windows)))  # fmt: skip
        say(f"quality: {recipe.name}: {_brief(rows[-1].metrics)}")
    if genai is not None:
        from edgepack.anchor_runners import OnnxFolderRunner

        runner = OnnxFolderRunner(Path(genai), max_len + 1, None)
        got = []
        for window in long_text.windows:
            runner.reset()
            got.append(runner.forward(window))
        rows.append(Row("onnxruntime-genai builder int4 (anchor)", "builder -p int4, block 32", 0.0,
                        text_metrics(reference, got, long_text.windows)))  # fmt: skip
    ppl = rows[0].metrics["ppl_reference"] if rows else None
    info = {"model": checkpoint.model_id, **long_text.record(), "ppl_reference": ppl}
    return info, rows


def genai_anchor(model: str | Path, env_dir: Path | None = None, say=lambda m: None) -> Path:
    """onnxruntime-genai's builder int4 folder (block 32) of ``model``, built once in the anchors' venv (installed
    on first use: onnxruntime-genai and its pins only). Raises ExportError when it cannot be built."""
    from edgepack.anchors import build_genai, ensure_env
    from edgepack.checkpoint import resolve
    from edgepack.errors import ExportError
    from edgepack.paths import cache_dir

    checkpoint = resolve(model)
    env_dir = env_dir or cache_dir() / "anchors-venv"
    python, failed = ensure_env(env_dir, say, names=("onnxruntime-genai",))
    if "onnxruntime-genai" in failed:
        raise ExportError(f"The onnxruntime-genai anchor could not be installed: {failed['onnxruntime-genai']}")
    work = cache_dir() / "anchors" / checkpoint.weights_digest.split(":")[-1][:16]
    try:
        return build_genai(python, checkpoint.path, work, say)
    except RuntimeError as exc:
        raise ExportError(f"The onnxruntime-genai anchor could not be built: {exc}") from None



def _brief(m: dict) -> str:
    return f"top1 {m['top1']:.3f}, KL {m['kl']:.3f}, ppl ratio {m['ppl_ratio']:.3f}"


def format_table(info: dict, rows: list[Row]) -> str:
    lines = [f"Method quality: {info['model']}, {info['tokens']} tokens of {info['source']} teacher-forced "
             f"({info['windows']} windows); fp32 perplexity {info['ppl_reference']:.3f}", "",
             "| codes | method | top-1 | KL (nats) | ppl ratio | codes s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        m = r.metrics
        lines.append(f"| {r.name} | {r.method} | {m['top1']:.3f} | {m['kl']:.3f} | {m['ppl_ratio']:.3f} | "
                     f"{r.seconds:.0f} |")
    return "\n".join(lines)


def noisy_checkpoint(model: str | Path, sigma: float = 0.1, seed: int = 0, out: Path | None = None) -> Path:
    """A copy of ``model`` whose linear weights carry Gaussian noise (``sigma`` x each row's std), in fp32
    safetensors; cached under $EDGEPACK_CACHE/noisy by the weights' digest, sigma and seed."""
    import torch
    from safetensors.torch import save_file

    from edgepack.checkpoint import resolve
    from edgepack.paths import cache_dir
    from edgepack.weights import TensorIndex

    checkpoint = resolve(model)
    digest = checkpoint.weights_digest.split(":")[-1][:16]
    out = out or cache_dir() / "noisy" / f"{digest}-s{sigma:g}-{seed}"
    if (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in NOISE_FILES:
        if (checkpoint.path / name).is_file():
            shutil.copyfile(checkpoint.path / name, tmp / name)
    index = TensorIndex(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in sorted(index.names):
        weight = index.read(name, torch.float32)
        if weight.dim() == 2 and ".layers." in name:  # decoder linears; embedding and norms stay
            weight = weight + sigma * weight.std(dim=1, keepdim=True) * torch.randn(weight.shape, generator=generator)
        tensors[name] = weight.contiguous()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    _set_dtype(tmp / "config.json", "float32")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _set_dtype(config: Path, dtype: str) -> None:
    import json

    data = json.loads(config.read_text())
    for key in ("torch_dtype", "dtype"):
        if key in data:
            data[key] = dtype
    config.write_text(json.dumps(data, indent=2) + "\n")
