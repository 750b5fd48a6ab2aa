"""Phi-3 (fused qkv and gate_up projections)."""

from edgepack.architectures import ArchSpec, register
from edgepack.architectures._tiny import TINY


def tiny_config(**overrides):
    from transformers import Phi3Config

    base = {k: v for k, v in TINY.items() if k != "head_dim"}
    return Phi3Config(**{**base, "pad_token_id": 0, **overrides})


SPEC = register(
    ArchSpec(
        name="phi3",
        model_types=("phi3",),
        tiny_config=tiny_config,
        cloud_default="microsoft/phi-4",
    )
)
