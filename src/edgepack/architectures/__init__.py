"""Supported architecture families, one module each, behind one registry keyed by ``config.model_type``.

An ``ArchSpec`` states what the exporters need to know about a family beyond its HF config: which
features it uses (sliding window, attention biases, scaled embeddings...) and a tiny config for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from edgepack.errors import CheckpointError
from edgepack.registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    name: str  # the family, e.g. "mistral"
    model_types: tuple[str, ...]  # config.model_type values this family covers
    hf_architectures: tuple[str, ...]  # config.architectures values, e.g. "MistralForCausalLM"
    tiny_config: Callable[..., Any]  # () -> transformers PretrainedConfig with a few layers, hidden 64
    features: frozenset[str] = field(default_factory=frozenset)
    # features: sliding_window, attention_bias, qk_norm, fused_qkv, gemma_norm, scaled_embedding,
    # logit_softcap, tied_embeddings, local_global_attention


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture", CheckpointError)


def register(spec: ArchSpec) -> ArchSpec:
    for model_type in spec.model_types:
        ARCHITECTURES.add(model_type, spec)
    return spec


def spec_for(config: Any) -> ArchSpec:
    """The spec for a loaded HF config; an unsupported one names itself and lists what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        archs = ", ".join(getattr(config, "architectures", None) or [str(model_type)])
        raise CheckpointError(
            f"Architecture {archs} (model_type {model_type!r}) is not supported. "
            f"Supported model types: {', '.join(ARCHITECTURES.names())}."
        )
    return ARCHITECTURES.get(model_type)


def families() -> list[ArchSpec]:
    seen: dict[str, ArchSpec] = {}
    for _, spec in ARCHITECTURES.items():
        seen.setdefault(spec.name, spec)
    return list(seen.values())


# Import the family modules so they register themselves.
from edgepack.architectures import gemma, llama, mistral, phi3, qwen  # noqa: E402,F401
