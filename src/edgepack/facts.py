"""Facts about a model computed once from its config (``Checkpoint.facts``) and carried from there: by the export
request to every backend's model wrapper, into the export record, and into memory planning. No other module
derives head_dim or the per-layer windows from a config itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import ArtifactError

SLIDING_TYPES = ("sliding_attention", "chunked_attention")


@dataclass(frozen=True)
class ModelFacts:
    """What edgepack derives from a model's config, once: shapes, the attention window of every layer (honouring
    ``use_sliding_window`` and ``layer_types``), and what memory follows from them."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tie_word_embeddings: bool
    windows: tuple[int | None, ...]  # per layer: the sliding window, or None for full attention

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelFacts:
        cfg = config.get("text_config") or config  # multimodal wrappers keep the LM's settings there
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        return cls(
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden),
            vocab_size=int(cfg["vocab_size"]),
            context_length=int(cfg.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(
                config.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
            ),
            windows=_windows(cfg.get("layer_types"), _window(cfg), layers),
        )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelFacts:
        """From export.json's ``checkpoint`` record (what the pipeline writes), or the checkpoint's config."""
        config_file = Path(record.get("path") or "") / "config.json"
        if record.get("path") and config_file.is_file():
            return cls.from_config(json.loads(config_file.read_text()))
        try:
            if None in (record.get(k) for k in ("num_attention_heads", "hidden_size", "num_layers", "vocab_size")):
                raise KeyError("num_attention_heads, hidden_size, num_layers or vocab_size")
            return cls.from_config(
                {
                    "num_attention_heads": record["num_attention_heads"],
                    "num_key_value_heads": record.get("num_kv_heads"),
                    "head_dim": record.get("head_dim"),
                    "hidden_size": record["hidden_size"],
                    "num_hidden_layers": record["num_layers"],
                    "vocab_size": record["vocab_size"],
                    "max_position_embeddings": record.get("context_length"),
                    "tie_word_embeddings": record.get("tie_word_embeddings"),
                    "layer_types": record.get("layer_types"),
                    "sliding_window": record.get("sliding_window"),
                }
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(
                f"export.json's checkpoint record lacks {exc} needed for the memory estimate."
            ) from None

    @property
    def sliding_window(self) -> int | None:
        """The window of the sliding layers (one per model in every supported family), or None."""
        return next((w for w in self.windows if w), None)

    @classmethod
    def of(cls, config) -> ModelFacts:
        """From a transformers config object (or its dict)."""
        return cls.from_config(config if isinstance(config, dict) else config.to_dict())

    def kv_bytes_per_token(self, kv_bytes: int) -> int:
        return 2 * self.num_kv_heads * self.head_dim * kv_bytes

    def kv_cache(self, context: int, kv_bytes: int, window_aware: bool = True) -> int:
        per_token = self.kv_bytes_per_token(kv_bytes)
        if not window_aware:
            return per_token * context * self.num_layers
        return sum(per_token * (context if w is None else min(context, w)) for w in self.windows)

    def activations(self, context: int, chunk: int) -> int:
        """Bytes of one prefill chunk's activations: fp32 logits, the residual and MLP buffers, one layer's scores."""
        chunk = min(chunk, context)
        per_token = self.vocab_size + 2 * self.hidden_size + self.intermediate_size + self.num_heads * context
        return 4 * chunk * per_token


def _window(cfg: dict) -> int | None:
    """The window the model applies: Qwen2-style configs carry one they do not use (use_sliding_window false)."""
    if cfg.get("use_sliding_window") is False:
        return None
    return cfg.get("sliding_window") or None


def _windows(
    layer_types: list[str] | None, sliding_window: int | None, layers: int
) -> tuple[int | None, ...]:
    if not sliding_window:
        return (None,) * layers
    if not layer_types:  # e.g. Mistral: one window for every layer
        return (int(sliding_window),) * layers
    return tuple(int(sliding_window) if t in SLIDING_TYPES else None for t in layer_types[:layers])
