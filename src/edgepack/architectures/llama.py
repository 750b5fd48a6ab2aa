"""Llama (and SmolLM2, which is a Llama)."""

from edgepack.architectures import ArchSpec, register
from edgepack.architectures._tiny import TINY


def tiny_config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, "tie_word_embeddings": True, **overrides})


SPEC = register(
    ArchSpec(
        name="llama",
        model_types=("llama",),
        tiny_config=tiny_config,
        cloud_default="meta-llama/Llama-3.1-8B-Instruct",
    )
)
