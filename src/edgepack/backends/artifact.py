"""The contract every backend shares (stage 3, export): the request an exporter gets, the Artifact it returns.

Each exporter takes the eager model (checkpoint dtype, freshly loaded for it: exporters may quantize it in
place), translates the recipe into its backend's quantization, writes its files into ``request.out_dir`` and
returns an ``Artifact``. The artifact is also written beside the files as ``artifact.json`` so that
``edgepack parity DIR`` and the manifest writer can rediscover every export from the folder alone.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from collections.abc import Callable


ARTIFACT_FILE = "artifact.json"
# The most tokens one call takes where a backend must fix it at export (ExecuTorch plans its activation memory
# for the largest call); longer prompts are prefilled in chunks. The memory estimate assumes the same.
PREFILL_CHUNK = 128


HEARTBEAT_S = 30.0  # seconds between "still running" lines during a long silent stage


@contextmanager
def heartbeat(say: Callable[[str], None], stage: str, estimate_s: float | None = None,
              every: float = HEARTBEAT_S) -> Iterator[None]:  # fmt: skip
    """Say, every ``every`` seconds while the block runs, that ``stage`` is still running: the elapsed time and,
    when known, the estimate (a library call such as XNNPACK's lowering says nothing for minutes)."""
    done = threading.Event()
    start = time.perf_counter()

    def beat():
        while not done.wait(every):
            elapsed = time.perf_counter() - start
            of = f" of ~{estimate_s:.0f} s estimated" if estimate_s else ""
            say(f"{stage}: still running, {elapsed:.0f} s elapsed{of}")

    thread = threading.Thread(target=beat, name=f"heartbeat: {stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@dataclass
class ExportRequest:
    checkpoint: Any  # edgepack.checkpoint.Checkpoint
    recipe: Any  # edgepack.recipes.Recipe
    max_seq_len: int
    out_dir: Path  # this target's folder inside the (temporary) export folder
    progress: Callable[[str], None] = lambda message: None
    prefill_chunk: int = PREFILL_CHUNK
    tokenizer_dir: Path | None = None  # the export's packaged tokenizer folder (None: the checkpoint's own files)
    codes: Any = None  # edgepack.codes.CodeBook: the integer codes to pack (None: rounded to nearest here)
    _special: Any = field(default=None, init=False, repr=False)

    @property
    def facts(self):
        """The model's shapes and per-layer windows (``edgepack.facts.ModelFacts``), derived once."""
        return self.checkpoint.facts

    def codes_of(self, module: str, weight, quant):
        return find_codes(self.codes, module, weight, quant)

    def special_ids(self) -> SpecialIds:
        """bos, eos and pad ids as the device tokenizer sees them (generation_config first, then the tokenizer
        config's tokens; eos: all of them), falling back to the model config: one answer for every backend."""
        if self._special is None:
            self._special = _special_ids(self)
        return self._special

    def tokenizer_files(self) -> dict[str, Path]:
        """The HF-format tokenizer files (tokenizer.json, its config, chat template, generation config)."""
        if self.tokenizer_dir is None:
            return self.checkpoint.tokenizer_files
        from edgepack.checkpoint import TOKENIZER_FILES

        return {n: self.tokenizer_dir / n for n in TOKENIZER_FILES if (self.tokenizer_dir / n).is_file()}

    def artifact(self, backend, main: str, files: list[str], **fields) -> Artifact:
        """The Artifact for ``backend``'s files in ``out_dir`` (names relative to it); the fields every
        backend shares come from the request, the rest (min_runtime, unhonoured, details) from ``fields``."""
        rel = self.out_dir.name
        return Artifact(
            target=backend.name,
            runtime=backend.runtime,
            path=f"{rel}/{main}",
            files=[f"{rel}/{f}" for f in files],
            recipe=self.recipe.name,
            weight_bits=self.recipe.weight_bits,
            max_seq_len=self.max_seq_len,
            **fields,
        )


@dataclass(frozen=True)
class SpecialIds:
    bos: int | None
    eos: tuple[int, ...]
    pad: int | None


def _special_ids(request: ExportRequest) -> SpecialIds:
    from edgepack.errors import CheckpointError
    from edgepack.tokenizer import DeviceTokenizer

    config = request.checkpoint.text_config_dict if request.checkpoint is not None else {}
    ids = {key: config.get(f"{key}_token_id") for key in ("bos", "pad")}
    eos = config.get("eos_token_id")
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    try:
        folder = request.tokenizer_dir or (request.checkpoint.path if request.checkpoint is not None else None)
        tokenizer = DeviceTokenizer(folder) if folder is not None else None
    except CheckpointError:  # no tokenizer.json: the config's ids are all there is
        tokenizer = None
    if tokenizer is not None:
        ids = {key: tokenizer.token_id(key) if tokenizer.token_id(key) is not None else value
               for key, value in ids.items()}  # fmt: skip
        eos |= set(tokenizer.eos_ids)
    as_int = lambda v: int(v) if v is not None else None  # noqa: E731
    return SpecialIds(as_int(ids["bos"]), tuple(sorted(int(i) for i in eos)), as_int(ids["pad"]))


@dataclass
class Artifact:
    target: str  # registry name: executorch | onnx | coreml
    runtime: str  # what runs it on device: executorch | onnxruntime | coreml
    path: str  # the main file or package, relative to the export folder
    files: list[str]  # every file that belongs to the artifact, relative to the export folder
    recipe: str
    weight_bits: int
    max_seq_len: int
    min_runtime: str  # e.g. "iOS 18", "executorch 1.5", "onnxruntime 1.20"
    export_seconds: float = 0.0
    unhonoured: list[str] = field(default_factory=list)  # recipe rules the backend could not honour
    details: dict[str, Any] = field(default_factory=dict)  # backend facts the runners need (names, shapes)

    def save(self, folder: Path) -> None:
        (folder / ARTIFACT_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Artifact:
        return cls(**json.loads((folder / ARTIFACT_FILE).read_text()))


def integer_settings(recipe, notes: list[str]):
    """The recipe's integer settings as (where, quant); a float setting whose width is not the recipe's dtype adds
    its line to ``notes`` instead (every backend keeps such weights in the recipe's dtype)."""
    for where, quant in recipe.settings():
        if not quant.is_float:
            yield where, quant
        elif quant.bits != (16 if recipe.dtype == "float16" else 32):
            notes.append(f"{where}: fp{quant.bits} weights inside a {recipe.dtype} recipe are kept {recipe.dtype}")


def find_codes(book, module: str, weight, quant):
    """The codes of ``module`` from the code ``book``, or ``weight`` rounded to nearest when it has none (a caller
    that built its request by hand); either way, ``edgepack.codes``' one definition of the codes."""
    from edgepack.codes import rtn

    found = book.get(module) if book is not None else None
    if found is not None:
        return found
    return rtn(weight, quant.bits, quant.group_size, quant.symmetric)


class Exporter(Protocol):
    backend: Any  # its edgepack.backends.Backend descriptor

    def unhonoured(self, recipe) -> list[str]:
        """Recipe rules this backend cannot honour, one line each (reported, never skipped silently)."""

    def interface(self, artifact: Artifact) -> dict | None:
        """What an app feeds and reads: {"inputs", "outputs", "states"}: lists of {"name", "dtype", "shape"}
        (symbolic dims as names), and "tokenizer": the tokenizer file this runtime reads; None when the artifact's
        record predates them."""

    def export(self, model, request: ExportRequest) -> Artifact: ...
