"""Mistral's families: Mistral (with or without a sliding window), Ministral 8B (per-layer sliding/full
attention) and Ministral 3 (YaRN rope with Llama-4 query scaling), and the ``mistral3`` vision-language wrapper
the Ministral 3 hub checkpoints ship as."""

from edgepack.architectures import ArchSpec, Wrapper, register, register_wrapper
from edgepack.architectures._tiny import TINY


def tiny_config(sliding_window: int | None = None, **overrides):
    from transformers import MistralConfig

    return MistralConfig(**{**TINY, "sliding_window": sliding_window, **overrides})


def tiny_ministral(**overrides):
    """Ministral 8B's layout: sliding and full attention interleaved per layer (3 sliding, 1 full there)."""
    from transformers import MinistralConfig

    layers = overrides.pop("num_hidden_layers", 4)
    types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(layers)]
    return MinistralConfig(**{**TINY, "num_hidden_layers": layers, "sliding_window": 8, "layer_types": types, **overrides})


def tiny_ministral3(**overrides):
    """Ministral 3's rope with a tiny ``original_max_position_embeddings`` (8), so that YaRN and the Llama-4
    query scaling (which steps up every 8 positions) both act inside a 20-token test prompt."""
    from transformers import Ministral3Config

    rope = {
        "rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 8, "rope_theta": 1e6,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1,
    }  # fmt: skip
    return Ministral3Config(
        **{**TINY, "max_position_embeddings": 128, "tie_word_embeddings": True, "sliding_window": None,
           "rope_parameters": rope, **overrides}
    )  # fmt: skip


SPEC = register(
    ArchSpec(
        name="mistral",
        model_types=("mistral",),
        tiny_config=tiny_config,
        cloud_default="mistralai/Mistral-7B-Instruct-v0.3",
    )
)
MINISTRAL = register(
    ArchSpec(
        name="ministral",
        model_types=("ministral",),
        tiny_config=tiny_ministral,
        cloud_default="mistralai/Mistral-7B-Instruct-v0.3",
    )
)
MINISTRAL3 = register(
    ArchSpec(
        name="ministral3",
        model_types=("ministral3",),
        tiny_config=tiny_ministral3,
        cloud_default="mistralai/Mistral-7B-Instruct-v0.3",
    )
)
MISTRAL3 = register_wrapper(
    Wrapper(
        model_type="mistral3",
        # The hub checkpoints' names first, then what transformers 5's save_pretrained writes.
        text_prefixes=("language_model.model.", "model.language_model."),
        lm_heads=("language_model.lm_head.", "lm_head."),
        not_exported={
            "vision_tower": "Pixtral vision encoder",
            "multi_modal_projector": "vision-to-text projector",
        },
        reason="edgepack exports the text decoder; image input needs the vision encoder, which no edgepack "
        "target runs yet",
    )
)
