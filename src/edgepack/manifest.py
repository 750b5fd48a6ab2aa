"""Stage 5, package: ``manifest.json``, what an app reads at run time.

It says which artifact to load (and whether it is intact: sha256 and bytes of every file), what it needs
(KV cache at full context, estimated peak memory, minimum runtime), how it scored against the reference
(parity), which device gets which artifact, and where a request goes when the device cannot serve it
(the cloud fallback). Built from the export folder alone: export.json, every ``*/artifact.json``,
parity.json (absent after ``--no-parity``), the tokenizer folder. Validated against the shipped JSON
Schema before it is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgepack import __version__
from edgepack.atomic import write_json
from edgepack.errors import ArtifactError, ManifestError
from edgepack.export_record import ExportRecord
from edgepack.backends import ARTIFACT_FILE, Artifact
from edgepack.paths import DATA_DIR, sha256_file

MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"  # the latest parity check, written by edgepack.parity.report
SCHEMA_VERSION = 1
SCHEMAS_DIR = DATA_DIR / "schemas"
# Shapes the memory estimates need, from export.json's "checkpoint" section.
SHAPE_FIELDS = ("num_layers", "num_kv_heads", "head_dim", "hidden_size", "num_attention_heads", "vocab_size")


def schema(name: str = "manifest") -> dict:
    path = SCHEMAS_DIR / f"{name}.schema.json"
    if not path.is_file():
        shipped = sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS_DIR.glob("*.schema.json"))
        raise ManifestError(f"No schema named {name!r}. Shipped schemas: {', '.join(shipped)}.")
    loaded = json.loads(path.read_text())
    if name == "manifest":  # the names of the registered backends, so that adding one touches only its folder
        from edgepack.backends import runtime_names, target_names

        loaded["$defs"]["target_name"]["enum"] = target_names()
        loaded["$defs"]["runtime_name"]["enum"] = runtime_names()
    return loaded


def validate_manifest(data: Any, source: str = MANIFEST_FILE) -> None:
    """Raise ManifestError listing every schema violation (path and message), or return."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema()).iter_errors(data), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or '<top>'}: {_message(e)}" for e in errors]
        listed = f" {lines[0]}" if len(lines) == 1 else "\n" + "\n".join(f"  - {line}" for line in lines)
        raise ManifestError(f"{source} does not match the manifest schema v{SCHEMA_VERSION}:{listed}")


def _message(error) -> str:
    # A pattern's regex means nothing to a reader; the schema's description of the value says what was wanted.
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r} is not {error.schema['description']}"
    return error.message


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(
            f"{path} does not exist. Export first (edgepack export), or pass a bundle folder."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}).") from None
    validate_manifest(data, str(path))
    return data


# --- digests ------------------------------------------------------------------------------------------


def list_files(root: Path, paths: Iterable[str]) -> list[str]:
    """Relative POSIX paths of every file under ``paths`` (folders expanded), sorted, without duplicates."""
    found = set()
    for rel in paths:
        full = root / rel
        if full.is_dir():
            found.update(p.relative_to(root).as_posix() for p in full.rglob("*") if p.is_file())
        elif full.is_file():
            found.add(Path(rel).as_posix())
        else:
            raise ManifestError(
                f"{full} is listed by the export but does not exist. Re-export into a fresh folder."
            )
    return sorted(found)


def file_entries(root: Path, paths: Iterable[str]) -> list[dict]:
    return [
        {"path": p, "sha256": sha256_file(root / p), "bytes": (root / p).stat().st_size}
        for p in list_files(root, paths)
    ]


def tree_digest(entries: list[dict]) -> str:
    """A folder's digest (e.g. an .mlpackage): sha256 over sorted ``path\\0sha256\\n`` lines, paths relative to it."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e["path"]):
        h.update(f"{e['path']}\0{e['sha256']}\n".encode())
    return h.hexdigest()


def path_digest(root: Path, rel: str, entries: list[dict]) -> str:
    if (root / rel).is_file():
        return next(e["sha256"] for e in entries if e["path"] == rel)
    prefix = rel.rstrip("/") + "/"
    inner = [{**e, "path": e["path"][len(prefix) :]} for e in entries if e["path"].startswith(prefix)]
    return tree_digest(inner)


# --- the manifest -------------------------------------------------------------------------------------


def build_manifest(export_root: str | Path, fallback=None, devices=None) -> dict:
    """The manifest of an export folder, validated against the schema (``fallback``: a ``Fallback`` or None)."""
    from edgepack.fallback import default, disabled
    from edgepack.router.select import RULE, selection_order

    root = Path(export_root)
    try:
        export = ExportRecord.read(root).model_dump(mode="json")
    except ArtifactError as exc:
        raise ManifestError(str(exc)) from None
    ckpt = export["checkpoint"]
    missing = [
        k for k in ("model_id", "weights_digest", "context_length", *SHAPE_FIELDS) if ckpt.get(k) is None
    ]
    if missing:
        raise ManifestError(
            f"{root / 'export.json'}: checkpoint section lacks {', '.join(missing)}. Re-export."
        )
    parity = _read_json(root / PARITY_FILE, "") if (root / PARITY_FILE).is_file() else None
    artifacts = [_artifact(root, a, fp, parity) for a, fp in _footprints(root)]
    if not artifacts:
        raise ManifestError(f"{root} holds no */{ARTIFACT_FILE}: nothing was exported.")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "edgepack_version": export.get("edgepack_version", __version__),
        "model": _model(ckpt),
        "tokenizer": _tokenizer(root, export.get("tokenizer") or {}),
        "generation": _generation(root, ckpt, export),
        "recipe": {"name": export["recipe"]["name"], "digest": export.get("recipe_digest", "")},
        "artifacts": artifacts,
        "devices": selection_order(_devices(devices or [], artifacts)),
        "device_selection": RULE,
        "fallback": _fallback(fallback, ckpt, default, disabled),
    }
    validate_manifest(manifest, str(root / MANIFEST_FILE))
    _check_devices(manifest)
    return manifest


def _fallback(fallback, ckpt: dict, default, disabled) -> dict:
    """The configured fallback, else the default one; an export whose cloud model cannot be named (no hub id,
    no family default) gets on-device only rather than a fallback that cannot work."""
    named = (ckpt["model_id"], ckpt.get("cloud_default"))
    if fallback is None:
        fallback = default()
        if fallback.cloud_model(*named)[0] is None:
            fallback = disabled()
    return fallback.to_manifest(*named)


def write_manifest(export_root: str | Path, fallback=None, devices=None) -> Path:
    """Build, validate and write ``export_root/manifest.json`` atomically; returns its path."""
    root = Path(export_root)
    manifest = build_manifest(root, fallback, devices)
    return write_json(root / MANIFEST_FILE, manifest)




def _read_json(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise ManifestError(f"{path} does not exist{'; ' + hint if hint else ''}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}).") from None


def _footprints(root: Path) -> list:
    """(Artifact, memory Footprint) per artifact: the same estimate ``edgepack plan`` uses for devices."""
    from edgepack.memory import artifact_footprints

    try:
        return artifact_footprints(root)
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"{root}: an {ARTIFACT_FILE} is not a valid artifact record ({exc}). Re-export."
        ) from None


def _artifact(root: Path, a: Artifact, footprint, parity: dict | None) -> dict:
    """One artifact: its files and digests, what it needs (runtime and OS, memory at its full context), how an
    app calls it, its parity summary."""
    from edgepack.backends import get_backend

    files = file_entries(root, [a.path, *a.files])
    need = footprint.at(a.max_seq_len)
    backend = get_backend(a.target)
    return {
        "target": a.target,
        "runtime": a.runtime,
        "path": Path(a.path).as_posix(),
        "min_runtime": a.min_runtime,
        "requires": backend.requires,
        **({"interface": interface} if (interface := backend.new_exporter().interface(a)) else {}),
        "sha256": path_digest(root, Path(a.path).as_posix(), files),
        "bytes": sum(f["bytes"] for f in files),
        "files": files,
        "recipe": a.recipe,
        "weight_bits": a.weight_bits,
        "max_seq_len": a.max_seq_len,
        "kv_cache_bytes": need.kv_cache,
        "peak_memory_bytes": need.total,
        "memory": {
            "weights_bytes": need.weights,
            "kv_cache_bytes": need.kv_cache,
            "overhead_bytes": need.overhead,
            "kv_cache_bytes_per_element": footprint.kv_bytes,
            "window_aware": footprint.window_aware,
        },
        "unhonoured": list(a.unhonoured),
        "parity": _parity(a, parity),
    }


def _parity(a: Artifact, parity: dict | None) -> dict:
    found = parity_entry(parity, a.target, a.path) if parity is not None else None
    return found or {"status": "not_run", "metrics": None, "thresholds": None, "failures": []}


def parity_entry(parity: dict, target: str, path: str) -> dict | None:
    """An artifact's parity block for the manifest from a parity.json record, or None when it was not checked."""
    for entry in parity.get("artifacts", []):
        if entry.get("target") == target and entry.get("path") == path:
            return {
                "status": "passed" if entry.get("passed") else "failed",
                "metrics": entry.get("metrics"),
                "thresholds": entry.get("thresholds"),
                "failures": entry.get("failures", []),
            }
    return None


def refresh_parity(export_root: str | Path) -> Path | None:
    """After a re-check (``edgepack parity``): the manifest's parity of every artifact parity.json holds is
    replaced by that latest result, written atomically; artifacts not re-checked keep theirs. None when the
    folder has no manifest yet (an export in progress writes it afterwards, from parity.json)."""
    root = Path(export_root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = _read_json(path, "")
    parity = _read_json(root / PARITY_FILE, "")
    for artifact in manifest["artifacts"]:
        latest = parity_entry(parity, artifact["target"], artifact["path"])
        if latest is not None:
            artifact["parity"] = latest
    validate_manifest(manifest, str(path))
    return write_json(path, manifest)


def _model(ckpt: dict) -> dict:
    return {
        "id": ckpt["model_id"],
        "architecture": ckpt.get("architecture", ""),
        "model_type": ckpt.get("model_type", ""),
        "num_parameters": int(ckpt.get("num_parameters") or 0),
        "license": ckpt.get("license"),
        "dtype": ckpt.get("dtype", ""),
        "source_precision": ckpt.get("source_precision") or ckpt.get("dtype", ""),
        "not_exported": ckpt.get("not_exported") or {},
        "rope": ckpt.get("rope") or {},
        "layer_types": ckpt.get("layer_types"),
        # a hub id or a folder/file name, never the build machine's path (exports before public_source: the name)
        "source": {"source": ckpt.get("public_source") or Path(str(ckpt.get("source", ""))).name,
                   "weights_digest": ckpt["weights_digest"]},
    }


def _tokenizer(root: Path, packaged: dict) -> dict:
    folder = root / "tokenizer"
    if not folder.is_dir():
        raise ManifestError(f"{folder} does not exist: the export must copy the tokenizer.")
    config = _optional_json(folder / "tokenizer_config.json")
    gen = _optional_json(folder / "generation_config.json")
    vocab = _token_ids(folder / "tokenizer.json")
    ids = {
        name: _token_id(gen.get(f"{name}_token_id"), config.get(f"{name}_token"), vocab)
        for name in ("bos", "eos", "pad")
    }
    template = None
    if (folder / "chat_template.jinja").is_file():
        template = {"path": "tokenizer/chat_template.jinja", "source": "file"}
    elif config.get("chat_template"):
        template = {"path": "tokenizer/tokenizer_config.json", "source": "tokenizer_config"}
    return {
        "files": file_entries(root, ["tokenizer"]),
        "bos_token_id": _first(ids["bos"]),
        "eos_token_ids": ids["eos"],
        "pad_token_id": _first(ids["pad"]),
        "chat_template": template,
        "source": packaged.get("source", "tokenizer.json"),
        "runtime_files": {rt: f"tokenizer/{name}" for rt, name in (packaged.get("runtime_files") or {}).items()},
        "adds_bos": bool(packaged.get("adds_bos")),
    }


def _generation(root: Path, ckpt: dict, export: dict) -> dict:
    gen = _optional_json(root / "tokenizer" / "generation_config.json")
    sampling = {
        k: gen.get(k)
        for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
    }
    eos = gen.get("eos_token_id")
    return {
        "context_length": int(ckpt["context_length"]),
        "max_seq_len": int(export.get("max_seq_len") or ckpt["context_length"]),
        "sampling": {k: v for k, v in sampling.items() if v is not None},
        "stop_token_ids": sorted(set(eos if isinstance(eos, list) else [eos] if eos is not None else [])),
    }


def _optional_json(path: Path) -> dict:
    return _read_json(path, "") if path.is_file() else {}


def _token_ids(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    data = _read_json(path, "")
    vocab = (
        dict((data.get("model") or {}).get("vocab") or {})
        if isinstance((data.get("model") or {}).get("vocab"), dict)
        else {}
    )
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab


def _token_id(from_gen, token, vocab: dict[str, int]) -> list[int]:
    """Ids from generation_config (int or list), else the tokenizer_config's token string looked up in the vocab."""
    if from_gen is not None:
        return sorted(set(from_gen if isinstance(from_gen, list) else [from_gen]))
    text = token.get("content") if isinstance(token, dict) else token
    return [vocab[text]] if text in vocab else []


def _first(ids: list[int]) -> int | None:
    return ids[0] if ids else None


def _devices(devices: list, artifacts: list[dict]) -> list[dict]:
    """The planner's entries; an artifact named by its target (a plan made before export) becomes its path."""
    by_target = {a["target"]: a["path"] for a in artifacts}
    out = []
    for d in devices:
        entry = _plain(d)
        if entry.get("artifact") in by_target:
            entry["artifact"] = by_target[entry["artifact"]]
        out.append(entry)
    return out


def _plain(entry) -> dict:
    if dataclasses.is_dataclass(entry):
        return dataclasses.asdict(entry)
    return entry.model_dump(mode="json") if hasattr(entry, "model_dump") else dict(entry)


def _check_devices(manifest: dict) -> None:
    paths = {a["path"] for a in manifest["artifacts"]}
    bad = [
        d["device"] for d in manifest["devices"] if d["artifact"] is not None and d["artifact"] not in paths
    ]
    if bad:
        raise ManifestError(
            f"devices {', '.join(bad)} name artifacts not in this export (have: {', '.join(sorted(paths))})."
        )
