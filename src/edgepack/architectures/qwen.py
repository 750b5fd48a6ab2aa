"""Qwen2 (attention biases on q/k/v) and Qwen3 (per-head q/k RMSNorm, no biases)."""

from edgepack.architectures import ArchSpec, register
from edgepack.architectures._tiny import TINY


def tiny_qwen2(**overrides):
    from transformers import Qwen2Config

    return Qwen2Config(**{**{k: v for k, v in TINY.items() if k != "head_dim"}, "tie_word_embeddings": True,
                          **overrides})


def tiny_qwen3(**overrides):
    from transformers import Qwen3Config

    return Qwen3Config(**{**TINY, "tie_word_embeddings": True, **overrides})


QWEN2 = register(
    ArchSpec(
        name="qwen2",
        model_types=("qwen2",),
        tiny_config=tiny_qwen2,
        cloud_default="Qwen/Qwen2.5-7B-Instruct",
    )
)
QWEN3 = register(
    ArchSpec(
        name="qwen3",
        model_types=("qwen3",),
        tiny_config=tiny_qwen3,
        cloud_default="Qwen/Qwen3-8B",
    )
)
