"""The code book: every quantized weight's integer codes for one checkpoint + recipe (+ calibration), computed once
and cached, read back by each backend and by the parity harness.

Cache: ``$EDGEPACK_CACHE/codes/<key>/`` with ``index.json`` (what each tensor is, how the codes were found) and
safetensors shards (one per decoder layer, one per other weight), so neither writing nor reading holds more than
one layer's codes. The key hashes the weights' digest, the recipe's code-deciding part
(``Recipe.codes_digest``), the calibration text's digest (calibrated methods) and ``VERSION``; a finished book
is published by renaming its folder into place, so a killed export never leaves half a book behind.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import torch

from edgepack.atomic import remove_stale, sibling
from edgepack.codes.core import Codes, rtn

VERSION = 2  # bump when the codes' definition changes: old cache entries are then never read
INDEX = "index.json"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class CodeBook:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / INDEX).read_text())
        self.tensors: dict[str, dict] = self.meta["tensors"]

    @property
    def key(self) -> str:
        return self.folder.name

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> Codes | None:
        """The codes of module ``name`` (e.g. ``model.layers.0.mlp.up_proj``, ``lm_head``), or None."""
        from safetensors import safe_open

        entry = self.tensors.get(name)
        if entry is None:
            return None
        # Copies, not views of the shard's memory map: a backend keeps the scales, and a kept view pins every page
        # of the shard read so far (a 4B export's code book, 3.9 GB, stayed resident that way).
        with safe_open(str(self.folder / entry["shard"]), framework="pt") as f:
            zero = f.get_tensor(f"{name}.zero").clone() if not entry["symmetric"] else None
            q, scale = f.get_tensor(f"{name}.q").clone(), f.get_tensor(f"{name}.scale").clone()
            return Codes(q, scale, zero, entry["bits"], entry["group"])

    def transform(self, recipe):
        """``transform(module_name, module, weight)`` for ``weights.load_layer_streamed``: each weight as the
        codes give it back (float32), float-kept weights rounded to the recipe's float dtype."""
        from edgepack.parity.fakequant import round_weight

        def apply(name, module, weight):
            if name in self.tensors:
                return self.get(name).dequantize()
            quant = recipe.for_module(name) if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) else None
            return round_weight(quant, weight) if quant is not None and quant.is_float else weight

        return apply

    def record(self) -> dict:
        """What export.json keeps: where the book is and how its codes were found."""
        keep = ("method", "calibration", "seconds", "layer_seconds", "damping_raised", "symmetric_only")
        return {"key": self.key, "path": str(self.folder), **{k: self.meta[k] for k in keep if k in self.meta}}


def cache_key(checkpoint, recipe, calibration) -> str:
    parts = {"version": VERSION, "weights": checkpoint.weights_digest, "recipe": recipe.codes_digest(),
             "calibration": calibration.digest if recipe.method.calibrated else None}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def codes_for(checkpoint, recipe, *, tokenizer=None, calibration=None, say=lambda m: None) -> CodeBook | None:
    """The code book of ``checkpoint`` under ``recipe`` (None when the recipe quantizes nothing): from the cache,
    else computed (GPTQ needs ``tokenizer`` and ``calibration``) and cached."""
    from edgepack.codes.calibration import load_calibration
    from edgepack.paths import cache_dir

    if not recipe.quantizes:
        return None
    if recipe.method.calibrated and calibration is None:
        calibration = load_calibration()
    folder = cache_dir() / "codes" / cache_key(checkpoint, recipe, calibration)
    if (folder / INDEX).is_file():
        say(f"codes: {recipe.method.describe()} codes from the cache ({folder.name})")
        return CodeBook(folder)
    remove_stale(folder, say)
    tmp = sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _compute(checkpoint, recipe, tokenizer, calibration, tmp, say)
        try:
            tmp.rename(folder)
        except OSError:  # another process published the same book first: the two are identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CodeBook(folder)


def _compute(checkpoint, recipe, tokenizer, calibration, out: Path, say) -> None:
    from edgepack.weights import TensorIndex, _empty_model

    start = time.perf_counter()
    model = _empty_model(checkpoint, torch.float32, None)  # meta: module names and shapes only
    wanted = _quantized_modules(model, recipe)
    index = TensorIndex(checkpoint)
    tied = getattr(model.config, "tie_word_embeddings", False)
    writer = _ShardWriter(out)
    meta: dict = {"version": VERSION, "method": recipe.method.describe(), "recipe": recipe.name}
    if recipe.method.calibrated:
        from edgepack.codes.calibrate import calibrate_layers
        from edgepack.codes.calibration import token_stream, windows

        ids = token_stream(calibration, tokenizer)
        seq_len = min(recipe.method.seq_len, checkpoint.context_length)  # never past the positions it was trained on
        batch = windows(ids, recipe.method.samples, seq_len, calibration.source)
        distinct = min(1.0, len(ids) / batch.numel())
        meta["calibration"] = {**calibration.record(), "tokens": len(ids), "windows": list(batch.shape),
                               "distinct_share": round(distinct, 3)}  # fmt: skip
        say(f"codes: GPTQ over {batch.shape[0]} x {batch.shape[1]} calibration tokens ({calibration.source})")
        _, layer_seconds, raised = calibrate_layers(checkpoint, recipe, batch, say, emit=writer.add)
        meta["layer_seconds"] = layer_seconds
        meta["damping_raised"] = raised
    else:
        say(f"codes: rounding to nearest ({recipe.method.describe()})")
    for name in wanted:
        if name in writer.tensors:
            continue  # calibrated
        quant = recipe.for_module(name)
        source = f"{name}.weight"
        if source not in index.names and tied and name.endswith("lm_head"):
            source = "model.embed_tokens.weight"
        weight = index.read(source, torch.float32)
        writer.add(name, rtn(weight, quant.bits, quant.group_size, quant.symmetric,
                             clip_search=recipe.method.clip_search))  # fmt: skip
        del weight
    writer.close()
    meta["seconds"] = round(time.perf_counter() - start, 2)
    meta["symmetric_only"] = all(e["symmetric"] for e in writer.tensors.values())
    meta["tensors"] = writer.tensors
    (out / INDEX).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _quantized_modules(model, recipe) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            quant = recipe.for_module(name)
            if quant is not None and not quant.is_float and quant.format == "linear":
                names.append(name)
    return names


class _ShardWriter:
    """Codes to safetensors shards: one per decoder layer (flushed when the next layer starts), one per other
    weight."""

    def __init__(self, out: Path):
        self.out = out
        self.tensors: dict[str, dict] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.shard: str | None = None

    def add(self, name: str, codes: Codes) -> None:
        match = _LAYER.match(name)
        shard = f"layer-{int(match.group(1)):04d}.safetensors" if match else f"{name}.safetensors"
        if shard != self.shard:
            self.flush()
            self.shard = shard
        self.pending[f"{name}.q"] = codes.q.contiguous()
        self.pending[f"{name}.scale"] = codes.scale.contiguous()
        if codes.zero is not None:
            self.pending[f"{name}.zero"] = codes.zero.contiguous()
        self.tensors[name] = {"shard": shard, "bits": codes.bits, "group": codes.group, "symmetric": codes.symmetric,
                              "shape": list(codes.q.shape)}  # fmt: skip

    def flush(self) -> None:
        from safetensors.torch import save_file

        if self.pending:
            save_file(self.pending, str(self.out / self.shard))
            self.pending = {}

    def close(self) -> None:
        self.flush()
