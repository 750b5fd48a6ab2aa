"""Gemma 2 and Gemma 3 (text): (1 + w) RMSNorm, sqrt(hidden)-scaled embeddings, local/global attention,
logit soft-capping (Gemma 2), q/k norms (Gemma 3)."""

from edgepack.architectures import ArchSpec, register
from edgepack.architectures._tiny import TINY


def tiny_gemma2(**overrides):
    from transformers import Gemma2Config

    return Gemma2Config(**{**TINY, "sliding_window": 8, "query_pre_attn_scalar": 16, **overrides})


def tiny_gemma3(**overrides):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        **{**TINY, "sliding_window": 8, "query_pre_attn_scalar": 16, "sliding_window_pattern": 2, **overrides}
    )


GEMMA2 = register(
    ArchSpec(
        name="gemma2",
        model_types=("gemma2",),
        tiny_config=tiny_gemma2,
        cloud_default="google/gemma-2-9b-it",
    )
)
GEMMA3 = register(
    ArchSpec(
        name="gemma3_text",
        model_types=("gemma3_text",),
        tiny_config=tiny_gemma3,
        cloud_default="google/gemma-3-27b-it",
    )
)
