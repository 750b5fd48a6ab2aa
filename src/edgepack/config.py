"""Typed, validated YAML/JSON data: recipes, device profiles, fallback configs, matrix configs.

Every model here forbids unknown keys. Loading collects every problem in a file and raises one
``ConfigError`` naming the file, the key path and the allowed keys or values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgepack.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config model: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_data(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """Parse a YAML or JSON file, turning syntax errors into a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise error(str(path), [f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {_one_line(exc)}"]) from None


def _one_line(exc: Exception) -> str:
    """yaml's message spans lines (context, a caret under the column); where it is and what was found suffice."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return " ".join(str(exc).split())
    return f"{getattr(exc, 'problem', None) or 'syntax error'} at line {mark.line + 1}, column {mark.column + 1}"


def validate(model: type[M], data: Any, source: str, error: type[ConfigError] = ConfigError) -> M:
    """Build ``model`` from ``data`` or raise ``error`` listing every problem at once."""
    if not isinstance(data, dict):
        raise error(source, [f"expected a mapping at the top level, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(source, [_describe(model, e) for e in exc.errors()]) from None


def load(model: type[M], path: str | Path, error: type[ConfigError] = ConfigError) -> M:
    path = Path(path)
    return validate(model, read_data(path, error), str(path), error)


def _describe(model: type[BaseModel], err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<top>"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{loc}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{loc}: {err['msg']}{shown}"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Walk the model's fields along ``loc`` to list the keys allowed where an unknown one was found."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def shipped_or_path(name_or_path: str | Path, folder: Path, what: str, error: type[ConfigError] = ConfigError) -> Path:
    """A shipped file by name (``folder/NAME.yaml``) or any file by path; unknown names list the shipped ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise error(str(path), ["file not found"])
        return path
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise error(str(name_or_path), [f"unknown {what}; shipped {what}s: {shipped}. Or pass a path to a .yaml file."])
    return path
