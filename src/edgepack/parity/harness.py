"""The parity harness: every artifact of an export folder against the fp32 eager reference.

For each prompt the reference (transformers, fp32, eager attention) generates ``decode_steps`` greedy tokens.
Each artifact then runs in its own runtime (its backend's runner, ``edgepack.backends``), teacher-forced: the prompt as one
prefill chunk, then the reference's greedy tokens one at a time through the decode path. Logits at every
position are compared (``edgepack.parity.metrics``). Greedy agreement is read off the same pass: free-running
greedy decoding reproduces the reference exactly up to the first position whose argmax differs.

Where the recipe quantizes, the error is split in two: quantization (the very codes the artifact packs, from the
export's code book, dequantized into the eager fp32 model, vs fp32) and conversion (export vs that quantized eager
model), so a user knows whether the exporter or the recipe is at fault. Artifacts of one recipe share a code book,
except a backend without zero points, which has the symmetric variant's.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np

from edgepack.export_record import is_export_folder
from edgepack.errors import ArtifactError, EdgepackError
from edgepack.backends import ARTIFACT_FILE, Artifact
from edgepack.export_record import ExportRecord
from edgepack.parity import metrics, open_runner
from edgepack.parity.prompts import Prompt, builtin_prompts, load_prompts
from edgepack.parity.metrics import AT_MOST, THRESHOLDS
from edgepack.parity.text import eager_logits

SCHEMA_VERSION = 1


@dataclass
class ArtifactParity:
    target: str
    path: str
    recipe: str
    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float | None]
    failures: list[dict] = field(default_factory=list)
    split: dict | None = None
    per_prompt: list[dict] = field(default_factory=list)
    text: dict | None = None  # with a text: {"metrics" (+ ppl, ppl_reference, ppl_ratio), "split"}


@dataclass
class ParityReport:
    passed: bool
    reference: dict
    prompts: int
    decode_steps: int
    artifacts: list[ArtifactParity]
    text: dict | None = None  # {"source", "tokens", "windows"} when a text was checked

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    def summary(self) -> dict:
        return {
            "passed": self.passed,
            "artifacts": {a.target: {"passed": a.passed, **a.metrics,
                                     "thresholds": {k: v for k, v in a.thresholds.items() if v is not None},
                                     **({"text": a.text["metrics"]} if a.text else {})} for a in self.artifacts},
        }

    def failure_message(self, where: Path | str) -> str:
        lines = [f"parity failed for {where}:"]
        for a in self.artifacts:
            for f in a.failures:
                op = "<=" if AT_MOST[f["metric"]] else ">="
                on = " on the text" if f.get("on") == "text" else ""
                lines.append(
                    f"  - {a.path}: {f['metric']}{on} = {f['value']:.6g}, must be {op} {f['threshold']:.6g}"
                )
        return "\n".join(lines)


def discover(export_root: Path) -> list[Artifact]:
    """Every artifact in an export folder (each target folder holds an artifact.json)."""
    export_root = Path(export_root)
    if not is_export_folder(export_root):
        raise ArtifactError(f"{export_root} is not an edgepack export folder (no export.json).")
    found = []
    for path in sorted(export_root.glob(f"*/{ARTIFACT_FILE}")):
        try:
            artifact = Artifact.read(path.parent)
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{path} is unreadable ({exc}).") from None
        if not (export_root / artifact.path).exists():
            raise ArtifactError(f"{path.parent.name}: {artifact.path} is missing from {export_root}.")
        found.append(artifact)
    if not found:
        raise ArtifactError(f"{export_root} holds no artifacts to check (no */{ARTIFACT_FILE}).")
    return found


def check_parity(
    export_root: str | Path,
    *,
    prompts_file: str | Path | None = None,
    decode_steps: int = 8,
    thresholds: dict[str, float] | None = None,
    split: bool = True,
    targets: list[str] | None = None,
    runner_options: dict[str, dict] | None = None,
    text: str | Path | None = None,
    write_reports: bool = True,
    allow_pickle: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Every artifact of ``export_root`` against the fp32 reference over the prompts; with ``text`` (a file, or
    "builtin"), also teacher-forced over that long text (``edgepack.parity.text``), held to the same thresholds.

    The reference is the checkpoint ``export.json`` names, loaded as ``inspect`` and ``export`` load one: pickled
    weights only with ``allow_pickle``, never because the export folder says so (it may have been tampered with)."""
    from edgepack.recipes import check_thresholds

    say = progress or (lambda message: None)
    root = Path(export_root)
    check_thresholds(thresholds)
    if decode_steps < 1:
        raise EdgepackError(f"--decode-steps must be at least 1, got {decode_steps}.")
    artifacts = _chosen(discover(root), targets, root)
    record = ExportRecord.read(root)
    # Refused here (pickles, a missing folder) before any tokenizer or runtime is read. Pickles only on the
    # caller's say-so, whatever the folder holds.
    checkpoint = _checkpoint(record, allow_pickle)
    prompts = _prompts(root, record, artifacts, prompts_file, decode_steps)
    long_text = _text(root, artifacts, text) if text is not None else None

    say(f"verify: fp32 reference over {len(prompts)} prompts" + (f" and {long_text.tokens} tokens of text"
                                                                  if long_text else ""))  # fmt: skip
    reference = _reference(checkpoint, prompts, decode_steps, long_text)
    quantized = _quantized_references(root, record, checkpoint, artifacts, reference) if split else {}

    limits = {**record.recipe.get("parity", {}), **{k: v for k, v in (thresholds or {}).items() if v is not None}}
    results = []
    for artifact in artifacts:
        say(f"verify[{artifact.target}]: running {artifact.path}")
        options = (runner_options or {}).get(artifact.target, {})
        results.append(_check_artifact(root, artifact, reference, quantized.get(_codes_key(artifact)), limits,
                                       options))  # fmt: skip
    report = ParityReport(
        passed=all(r.passed for r in results),
        reference={"model": record.model_id, "dtype": "float32", "attention": "eager"},
        prompts=len(prompts),
        decode_steps=decode_steps,
        artifacts=results,
        text=long_text.record() if long_text else None,
    )
    if write_reports:
        from edgepack.manifest import refresh_parity
        from edgepack.parity.report import write_reports as write

        write(root, report)
        refresh_parity(root)  # the manifest an app and `verify` read must never say passed after a failed re-check
    return report


def _chosen(artifacts: list[Artifact], targets: list[str] | None, root: Path) -> list[Artifact]:
    """The artifacts of ``targets`` (None: all); a blank, unknown or absent target is an error, not "all"."""
    from edgepack.backends import target_names

    if targets is None:
        return artifacts
    held = [a.target for a in artifacts]
    if not targets or not all(t.strip() for t in targets):
        raise EdgepackError(f"--target {','.join(targets)!r} has an empty name in it. Pass a comma list of "
                            f"{', '.join(held)}, or leave --target out for all of them.")  # fmt: skip
    unknown = [t for t in targets if t not in target_names()]
    absent = [t for t in targets if t not in held and t not in unknown]
    if unknown or absent:
        what = f"Unknown target {', '.join(map(repr, unknown))}" if unknown else f"{root} holds no {', '.join(absent)} artifact"
        raise EdgepackError(f"{what}. This export holds: {', '.join(held)}.")
    return [a for a in artifacts if a.target in targets]


@dataclass
class _Reference:
    prompts: list[Prompt]
    tokens: list[list[int]]  # per prompt: prompt ids + greedy ids
    greedy: list[list[int]]
    logits: list[np.ndarray]  # per prompt: [len(tokens), vocab]
    text: object = None  # edgepack.parity.text.Text, or None
    text_logits: list[np.ndarray] | None = None  # per text window


def _text(root: Path, artifacts, source):
    from edgepack.parity.text import load_text
    from edgepack.tokenizer import DeviceTokenizer

    return load_text(source, DeviceTokenizer(root / "tokenizer"), min(a.max_seq_len for a in artifacts) - 1)


def _prompts(root, record, artifacts, prompts_file, decode_steps) -> list[Prompt]:
    from edgepack.tokenizer import DeviceTokenizer

    tokenizer = DeviceTokenizer(root / "tokenizer")
    max_len = min(a.max_seq_len for a in artifacts) - decode_steps - 1
    if max_len < 1:
        raise EdgepackError(f"--decode-steps {decode_steps} leaves no room for a prompt in the artifacts' context.")
    if prompts_file:
        return load_prompts(Path(prompts_file), tokenizer, max_len)
    return builtin_prompts(tokenizer, record.checkpoint.sliding_window, max_len)


def _load(checkpoint, recipe=None, book=None):
    """The fp32 eager reference; with ``recipe``, its weights as the export stores them: the code ``book``'s
    codes dequantized (or, for an export without one, the recipe's rounding); None when that changes nothing.

    safetensors checkpoints stream layer by layer (``load_layer_streamed``): a forward holds one module's fp32
    weights, not the model's (a 4B model would need 14 GB)."""
    from edgepack.parity.fakequant import fake_quantize, rounding
    from edgepack.weights import load_layer_streamed

    if all(f.suffix == ".safetensors" for f in checkpoint.weight_files):
        model = load_layer_streamed(checkpoint, "float32", "eager")
        if recipe is None:
            return model
        transform = book.transform(recipe) if book is not None else rounding(recipe, model)
        return None if transform is None else load_layer_streamed(checkpoint, "float32", "eager", transform)
    model = checkpoint.load_model(dtype="float32", attn_implementation="eager")
    if recipe is None:
        return model
    if book is not None:
        _apply_book(model, book, recipe)
    elif not fake_quantize(model, recipe):
        return None
    return model


def _checkpoint(record: ExportRecord, allow_pickle: bool):
    from edgepack.checkpoint import resolve

    if not record.checkpoint.path:
        raise ArtifactError("export.json names no checkpoint path: not an edgepack export record. Export again.")
    return resolve(record.checkpoint.path, allow_pickle=allow_pickle, trust_remote_code=False)


def _apply_book(model, book, recipe) -> None:
    """The code book's weights, dequantized, in place of ``model``'s (lm_head untied first when tied)."""
    import torch

    from edgepack.parity.fakequant import _untie

    transform = book.transform(recipe)
    _untie(model, recipe)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.copy_(transform(name, module, module.weight.float()))


def _reference(checkpoint, prompts: list[Prompt], decode_steps: int, text=None) -> _Reference:
    import torch

    model = _load(checkpoint)
    tokens, greedy, logits = [], [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = list(prompt.ids)
            for _ in range(decode_steps):
                out = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(out.argmax()))
            full = model(torch.tensor([ids[:-1]])).logits[0].float().numpy()
            tokens.append(ids[:-1])
            greedy.append(ids[len(prompt.ids):])
            logits.append(full)
        text_logits = eager_logits(model, text.windows) if text else None
    del model
    gc.collect()
    return _Reference(prompts, tokens, greedy, logits, text, text_logits)



def _codes_key(artifact) -> str | None:
    return artifact.details.get("codes")


def _quantized_references(root: Path, record: ExportRecord, checkpoint, artifacts, reference: _Reference) -> dict:
    """code book key (None: an export without one) -> (prompt logits, text logits or None) of the eager model
    with those weights, for each book the artifacts use; {} when the recipe quantizes nothing."""
    from edgepack.recipes import Recipe

    recipe = Recipe.model_validate(record.recipe)
    if not recipe.rules and recipe.embedding is None and recipe.lm_head is None:
        return {}
    found = {}
    for key in sorted({_codes_key(a) for a in artifacts}, key=str):
        book = _book(root, record, checkpoint, recipe, key) if key is not None else None
        model = _load(checkpoint, recipe, book)
        if model is None:
            continue
        text = eager_logits(model, reference.text.windows) if reference.text else None
        found[key] = (eager_logits(model, reference.tokens), text)
        del model
        gc.collect()
    return found


def _book(root: Path, record: ExportRecord, checkpoint, recipe, key: str):
    """The export's code book ``key``: from the cache, or computed again (deterministic) when it was evicted."""
    from edgepack.codes import CodeBook, codes_for
    from edgepack.codes.calibration import load_calibration
    from edgepack.tokenizer import DeviceTokenizer

    for kind, entry in record.codes.items():
        if entry.key != key:
            continue
        if (Path(entry.path) / "index.json").is_file():
            return CodeBook(Path(entry.path))
        source = (entry.calibration or {}).get("source")
        calibration = load_calibration(None if source in (None, "builtin") else source) if recipe.method.calibrated else None
        variant = recipe if kind == "zero_points" else recipe.symmetric_variant()
        book = codes_for(checkpoint, variant, tokenizer=DeviceTokenizer(root / "tokenizer"), calibration=calibration)
        if book is not None and book.key == key:
            return book
        raise ArtifactError(
            f"The code book {key} of {root} is no longer cached and computing it again gave different codes (the "
            "checkpoint or calibration text changed since the export). Export again."
        )
    raise ArtifactError(f"{root}/export.json names no code book {key}. The export folder was edited; export again.")


def _run_artifact(runner, reference: _Reference) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Logits of every prompt (prefill, then the reference's greedy tokens one at a time) and of every text
    window (one prefill each)."""
    outputs = []
    for prompt, greedy in zip(reference.prompts, reference.greedy):
        runner.reset()
        chunks = [runner.forward(list(prompt.ids))]
        chunks += [runner.forward([tok]) for tok in greedy[:-1]]
        outputs.append(np.concatenate(chunks, axis=0).astype(np.float32))
    text = None
    if reference.text is not None:
        text = []
        for window in reference.text.windows:
            runner.reset()
            text.append(np.asarray(runner.forward(list(window)), dtype=np.float32))
    return outputs, text


def _check_artifact(root, artifact, reference, quantized, limits, options) -> ArtifactParity:
    try:
        runner = open_runner(root, artifact, **options)
        got, got_text = _run_artifact(runner, reference)
    except EdgepackError:
        raise
    except Exception as exc:  # noqa: BLE001 - any runtime failure means the artifact cannot be checked
        raise ArtifactError(f"{artifact.path} could not be run in its runtime: {type(exc).__name__}: {exc}") from None
    finally:
        runner = None
        gc.collect()
    per_prompt = [_prompt_metrics(ref, out, reference.greedy[i], len(reference.prompts[i].ids))
                  for i, (ref, out) in enumerate(zip(reference.logits, got))]
    measured = metrics.aggregate(per_prompt)
    quant_prompts, quant_text = quantized if quantized is not None else (None, None)
    split = None
    if quant_prompts is not None:
        split = {
            "quantization": metrics.aggregate([metrics.compare(r, q) for r, q in zip(reference.logits, quant_prompts)]),
            "conversion": metrics.aggregate([metrics.compare(q, g) for q, g in zip(quant_prompts, got)]),
        }
    failures = _failures(measured, limits)
    text = None
    if got_text is not None:
        text = _text_quality(reference, quant_text, got_text)
        failures += [{**f, "on": "text"} for f in _failures(text["metrics"], limits)]
    return ArtifactParity(
        target=artifact.target,
        path=artifact.path,
        recipe=artifact.recipe,
        passed=not failures,
        metrics=measured,
        thresholds={k: limits.get(k) for k in THRESHOLDS},
        failures=failures,
        split=split,
        per_prompt=[{"prompt": p.name, "tokens": len(p.ids), **m} for p, m in zip(reference.prompts, per_prompt)],
        text=text,
    )


def _text_quality(reference: _Reference, quantized, got) -> dict:
    from edgepack.parity.text import text_metrics

    windows = reference.text.windows
    found = {"metrics": text_metrics(reference.text_logits, got, windows), "split": None}
    if quantized is not None:
        found["split"] = {"quantization": text_metrics(reference.text_logits, quantized, windows),
                          "conversion": text_metrics(quantized, got, windows)}  # fmt: skip
    return found


def _prompt_metrics(ref: np.ndarray, got: np.ndarray, greedy: list[int], prompt_len: int) -> dict[str, float]:
    m = metrics.compare(ref, got)
    predicted = got[prompt_len - 1:].argmax(-1).tolist()
    m["greedy_agreement"] = metrics.greedy_agreement(greedy, predicted)
    return m


def _failures(measured: dict, limits: dict) -> list[dict]:
    failures = []
    for key, (metric, at_most) in THRESHOLDS.items():
        limit = limits.get(key)
        if limit is None or metric not in measured:  # a text has no greedy continuation
            continue
        value = measured[metric]
        ok = value <= limit if at_most else value >= limit
        if not ok or not np.isfinite(value):
            failures.append({"metric": metric, "value": value, "threshold": limit})
    return failures
