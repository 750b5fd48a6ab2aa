"""Mistral, with or without a sliding attention window (the flagship edge models are Mistrals)."""

from edgepack.architectures import ArchSpec, register
from edgepack.architectures._tiny import TINY


def tiny_config(sliding_window: int | None = None, **overrides):
    from transformers import MistralConfig

    return MistralConfig(**{**TINY, "sliding_window": sliding_window, **overrides})


SPEC = register(
    ArchSpec(
        name="mistral",
        model_types=("mistral",),
        hf_architectures=("MistralForCausalLM",),
        tiny_config=tiny_config,
        features=frozenset({"sliding_window"}),
    )
)
