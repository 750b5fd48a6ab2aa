"""The export pipeline, as its stages:

1. load      ``edgepack.checkpoint.resolve``: find and check the checkpoint (nothing of it runs).
2. quantize  ``edgepack.codes.codes_for``: every quantized weight's integer codes, computed once (GPTQ or
             round-to-nearest, per the recipe's method) and cached; each backend packs exactly those codes
             (a backend without zero points, XNNPACK, gets the recipe's symmetric variant's codes).
3. export    ``edgepack.backends.<target>``: one artifact per target, each from a freshly loaded model in
             the checkpoint's dtype (exporters may quantize in place; only one model is in memory at a time).
4. verify    ``edgepack.parity.harness.check_parity``: every artifact against the fp32 eager reference.
5. package   ``edgepack.manifest.write_manifest``: checksums, sizes, memory needs, parity, cloud fallback.

Everything is written into a temporary sibling of OUT and renamed into place at the end, so OUT holds a
complete export or nothing. A parity failure still leaves the complete export (to inspect) and raises
``ParityError``.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

from edgepack import __version__
from edgepack.atomic import atomic_dir
from edgepack.checkpoint import Checkpoint, resolve
from edgepack.errors import ExportError, ParityError
from edgepack.export_record import CheckpointRecord, ExportRecord
from edgepack.backends import Artifact, ExportRequest, get_backend, get_exporter, target_names
from edgepack.recipes import Recipe, check_thresholds, load_recipe

TOKENIZER_DIR = "tokenizer"
DEFAULT_MAX_SEQ_LEN = 2048


@dataclass
class ExportResult:
    out: Path
    artifacts: list[Artifact]
    parity: Any = None  # edgepack.parity.harness.ParityReport, or None with parity=False
    manifest: Path | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "out": str(self.out),
            "seconds": round(self.seconds, 2),
            "artifacts": [
                {"target": a.target, "path": a.path, "recipe": a.recipe, "export_seconds": round(a.export_seconds, 2),
                 "bytes": _size(self.out / a.path), "unhonoured": a.unhonoured}
                for a in self.artifacts
            ],
            "parity": None if self.parity is None else self.parity.summary(),
            "manifest": str(self.manifest) if self.manifest else None,
            "warnings": self.warnings,
        }


def export(
    model: str | Path,
    *,
    out: str | Path,
    recipe: str | Path | Recipe = "int4-block32",
    targets: Sequence[str] | None = None,
    max_seq_len: int | None = None,
    force: bool = False,
    parity: bool = True,
    parity_options: dict | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    fallback: Any = None,
    devices: str | Sequence[str] = "all",
    calibration: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` with ``recipe`` to each of ``targets`` (default: all) in ``out``.

    ``devices`` (profile names, or "all") fills the manifest's devices section: which artifact each device
    should load, or cloud-only and why. ``calibration`` (a .txt or .jsonl file; default the built-in set) is the
    text a calibrated recipe (method gptq) computes its codes on.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    targets = check_targets(targets)
    check_thresholds((parity_options or {}).get("thresholds"))
    if parity:
        check_parity_inputs(parity_options or {})
    out = check_output(Path(out), force)
    say(f"load: resolving {model}")
    calibration = check_calibration(recipe, calibration)
    checkpoint = resolve(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    max_seq_len = check_max_seq_len(checkpoint, max_seq_len, targets)
    result = ExportResult(out, [])
    with atomic_dir(out, ExportError, say) as tmp:
        write_export_record(tmp, checkpoint, recipe, max_seq_len, targets)
        books = compute_codes(tmp, checkpoint, recipe, targets, calibration, say)
        for target in targets:
            artifact = export_target(checkpoint, recipe, target, tmp, max_seq_len, say, books)
            result.artifacts.append(artifact)
            result.warnings += [f"{target}: {rule}" for rule in artifact.unhonoured]
        if parity:
            from edgepack.parity.harness import check_parity

            say("verify: checking parity against the fp32 reference")
            result.parity = check_parity(tmp, progress=say, allow_pickle=checkpoint.allow_pickle, **(parity_options or {}))
        manifest = package(tmp, fallback, devices, say)
    result.manifest = out / manifest.name if manifest else None
    result.seconds = time.perf_counter() - start
    if result.parity is not None and not result.parity.passed:
        raise ParityError(result.parity.failure_message(out))
    return result


def check_parity_inputs(options: dict) -> None:
    """The parity prompts file and text, checked before anything is loaded or exported (a typo there must not
    cost an export)."""
    from edgepack.parity.prompts import read_prompts
    from edgepack.parity.text import read_text

    if options.get("prompts_file"):
        read_prompts(Path(options["prompts_file"]))
    if options.get("text") is not None:
        read_text(options["text"])


def check_calibration(recipe: Recipe, calibration):
    """The calibration text, read and checked before anything is loaded (None for an uncalibrated recipe)."""
    from edgepack.codes.calibration import load_calibration

    if not recipe.method.calibrated:
        if calibration is not None:
            raise ExportError(
                f"--calibration applies to calibrated recipes (method gptq); {recipe.name} uses "
                f"{recipe.method.name}. Drop --calibration or choose a gptq recipe."
            )
        return None
    return load_calibration(calibration)


def compute_codes(root: Path, checkpoint: Checkpoint, recipe: Recipe, targets, calibration, say) -> dict:
    """The code books the targets need ("zero_points": the recipe's own; "symmetric": its symmetric variant, for
    backends without zero points), each recorded in export.json."""
    from edgepack.codes import codes_for
    from edgepack.tokenizer import DeviceTokenizer

    tokenizer = DeviceTokenizer(root / TOKENIZER_DIR) if recipe.method.calibrated else None
    needed = {"symmetric" if not get_backend(t).zero_points else "zero_points" for t in targets}
    books = {}
    for kind in sorted(needed):
        variant = recipe if kind == "zero_points" else recipe.symmetric_variant()
        if kind == "symmetric" and "zero_points" in books and books["zero_points"].meta["symmetric_only"]:
            books[kind] = books["zero_points"]  # the recipe is symmetric already: one book serves both
            continue
        books[kind] = codes_for(checkpoint, variant, tokenizer=tokenizer, calibration=calibration, say=say)
    books = {k: b for k, b in books.items() if b is not None}
    if books:
        ExportRecord.read(root).with_codes({kind: book.record() for kind, book in books.items()}).write(root)
    return books


def check_targets(targets: Sequence[str] | None) -> list[str]:
    """None means every target; a list must name only known targets (a blank one is a typo, not "all")."""
    known = target_names()
    if targets is None:
        return known
    if not targets or not all(t.strip() for t in targets):
        raise ExportError(
            f"--target {','.join(targets)!r} has an empty name in it. Pass a comma list of {', '.join(known)}, "
            "or leave --target out for every target."
        )
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ExportError(f"Unknown target {', '.join(map(repr, unknown))}. Supported: {', '.join(known)}.")
    return list(dict.fromkeys(targets))


def check_output(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ExportError(f"Output path {out} is a file. Pass a folder path for --out.")
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(
            f"Output folder {out} already exists and is not empty. Pass --force to replace it, or choose a new path."
        )
    return out


def check_max_seq_len(checkpoint: Checkpoint, max_seq_len: int | None, targets: Sequence[str] = ()) -> int:
    """The KV-cache length: ``DEFAULT_MAX_SEQ_LEN`` within the model's context when None; else checked against
    the context and every target's minimum (the one check, before any weight is loaded)."""
    context = checkpoint.context_length
    if max_seq_len is None:
        return min(context, DEFAULT_MAX_SEQ_LEN)
    floor = max([2, *(get_backend(t).min_seq_len for t in targets)])
    if max_seq_len < floor:
        needs = [t for t in targets if get_backend(t).min_seq_len == floor]
        raise ExportError(f"--max-seq-len must be at least {floor}{' for ' + ', '.join(needs) if needs else ''}, "
                          f"got {max_seq_len}.")  # fmt: skip
    if max_seq_len > context:
        raise ExportError(
            f"--max-seq-len {max_seq_len} exceeds the model's context length ({context}). "
            f"Pass --max-seq-len {context} or less."
        )
    return max_seq_len


def write_export_record(root: Path, checkpoint: Checkpoint, recipe: Recipe, max_seq_len: int, targets) -> None:
    """export.json and the tokenizer folder, packaged for every runtime and checked before any export runs."""
    from edgepack.tokenizer_package import package_tokenizer, record as tokenizer_record

    # Only ExecuTorch's runner reads tekken.json / tokenizer.model natively; every other target reads tokenizer.json,
    # and so does calibration.
    needs_json = any(not get_backend(t).native_tokenizer for t in targets) or recipe.method.calibrated
    tokenizer = package_tokenizer(checkpoint, root / TOKENIZER_DIR, needs_json=needs_json)
    ExportRecord(
        edgepack_version=__version__,
        checkpoint=checkpoint_record(checkpoint),
        recipe=recipe.model_dump(mode="json"),
        recipe_digest=recipe.digest(),
        tokenizer=tokenizer_record(tokenizer),
        max_seq_len=max_seq_len,
        targets=list(targets),
    ).write(root)


def checkpoint_record(checkpoint: Checkpoint) -> CheckpointRecord:
    """What the manifest, parity and memory planning need to know of the checkpoint, without loading it."""
    cfg = checkpoint.text_config_dict
    facts = checkpoint.facts
    return CheckpointRecord(
        source=checkpoint.source,  # what the user passed: export.json is the build record, never bundled
        path=str(checkpoint.path.resolve()),
        public_source=checkpoint.public_source,
        model_id=checkpoint.model_id,
        architecture=checkpoint.spec.name,
        cloud_default=checkpoint.spec.cloud_default,
        model_type=cfg.get("model_type"),
        wrapper=checkpoint.wrapper.model_type if checkpoint.wrapper else None,
        not_exported=checkpoint.not_exported,
        license=checkpoint.config_dict.get("license"),
        num_parameters=checkpoint.num_parameters,
        dtype=checkpoint.dtype,
        source_precision=checkpoint.source_precision,
        rope=checkpoint.rope,
        weights_digest=checkpoint.weights_digest,
        context_length=checkpoint.context_length,
        sliding_window=facts.sliding_window,
        windows=list(facts.windows),
        layer_types=cfg.get("layer_types"),
        num_layers=facts.num_layers,
        num_attention_heads=facts.num_heads,
        num_kv_heads=facts.num_kv_heads,
        head_dim=facts.head_dim,
        hidden_size=facts.hidden_size,
        intermediate_size=cfg.get("intermediate_size"),
        vocab_size=facts.vocab_size,
        tie_word_embeddings=cfg.get("tie_word_embeddings"),
    )


def export_target(checkpoint: Checkpoint, recipe: Recipe, target: str, root: Path, max_seq_len: int, say,
                  books: dict | None = None) -> Artifact:  # fmt: skip
    exporter = get_exporter(target)
    book = (books or {}).get("zero_points" if exporter.backend.zero_points else "symmetric")
    folder = root / target
    folder.mkdir()
    say(f"export[{target}]: loading {checkpoint.spec.name} weights ({checkpoint.dtype})")
    model = checkpoint.load_model()
    request = ExportRequest(checkpoint, recipe, max_seq_len, folder, lambda m: say(f"export[{target}]: {m}"),
                            tokenizer_dir=root / TOKENIZER_DIR, codes=book)
    start = time.perf_counter()
    try:
        artifact = exporter.export(model, request)
    finally:
        del model
        gc.collect()
    artifact.export_seconds = time.perf_counter() - start
    if book is not None:
        artifact.details["codes"] = book.key
    artifact.save(folder)
    return artifact


def package(root: Path, fallback: Any, devices: str | Sequence[str], say) -> Path:
    from edgepack.manifest import write_manifest
    from edgepack.plan import devices_section, plan_export

    say("package: planning device fit and writing manifest.json")
    devices = devices_section(plan_export(root, devices))
    return write_manifest(root, fallback=fallback, devices=devices)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0
