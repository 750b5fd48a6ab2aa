"""Supported architecture families, one module each, behind one registry keyed by ``config.model_type``.

An ``ArchSpec`` states what edgepack needs to know about a family beyond its HF config: the model types it
covers, the cloud fallback's default model, and a tiny config for tests. The exporters read every other fact
(sliding windows, biases, norms, rope) from the config and the model's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from edgepack.errors import CheckpointError
from edgepack.registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    name: str  # the family, e.g. "mistral"
    model_types: tuple[str, ...]  # config.model_type values this family covers
    tiny_config: Callable[..., Any]  # () -> transformers PretrainedConfig with a few layers, hidden 64
    # The cloud fallback's model when the checkpoint's own hub id is unknown (a local folder, a GGUF file): an
    # instruct model of the family that Inference Providers serve. Chosen 2026-11 from the router's listings as
    # known here (this machine cannot reach the hub to re-check); override with --fallback-model.
    cloud_default: str | None = None


@dataclass(frozen=True)
class Wrapper:
    """A multimodal checkpoint whose text decoder edgepack exports (e.g. ``mistral3``: Ministral 3).

    The decoder's settings sit in the config's ``text_config`` and its tensors under one of ``text_prefixes``;
    the tensors under ``not_exported`` are skipped while loading, and manifests and ``inspect`` say why.
    """

    model_type: str
    text_prefixes: tuple[str, ...]  # e.g. "language_model.model." -> the decoder's "model."
    lm_heads: tuple[str, ...]  # e.g. "language_model.lm_head." -> "lm_head."
    not_exported: dict[str, str]  # tensor-name prefix -> what it is
    reason: str

    def text_name(self, name: str) -> str | None:
        """The text decoder's name for a checkpoint tensor, or None for a tensor that is not exported."""
        for prefix in self.text_prefixes:
            if name.startswith(prefix):
                return "model." + name[len(prefix):]
        for prefix in self.lm_heads:
            if name.startswith(prefix):
                return "lm_head." + name[len(prefix):]
        if any(name.startswith(p) or name.startswith("model." + p) for p in self.not_exported):
            return None
        raise CheckpointError(
            f"Tensor {name!r} is neither in the {self.model_type} text decoder nor in its vision parts "
            f"({', '.join(self.not_exported)}). The checkpoint's layout is not the one edgepack knows."
        )


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture", CheckpointError)
WRAPPERS: Registry[Wrapper] = Registry("multimodal wrapper", CheckpointError)


def register(spec: ArchSpec) -> ArchSpec:
    for model_type in spec.model_types:
        ARCHITECTURES.add(model_type, spec)
    return spec


def register_wrapper(wrapper: Wrapper) -> Wrapper:
    WRAPPERS.add(wrapper.model_type, wrapper)
    return wrapper


def spec_for(config: Any) -> ArchSpec:
    """The spec for a loaded HF config; an unsupported one names itself and lists what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        archs = ", ".join(getattr(config, "architectures", None) or [str(model_type)])
        supported = ARCHITECTURES.names() + [f"{w} (its text decoder)" for w in WRAPPERS.names()]
        raise CheckpointError(
            f"Architecture {archs} (model_type {model_type!r}) is not supported. "
            f"Supported model types: {', '.join(supported)}."
        )
    return ARCHITECTURES.get(model_type)


def families() -> list[ArchSpec]:
    seen: dict[str, ArchSpec] = {}
    for _, spec in ARCHITECTURES.items():
        seen.setdefault(spec.name, spec)
    return list(seen.values())


# Import the family modules so they register themselves.
from edgepack.architectures import gemma, llama, mistral, phi3, qwen  # noqa: E402,F401
