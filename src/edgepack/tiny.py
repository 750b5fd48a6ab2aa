"""Tiny checkpoints built in code: the tests' models and the demo's offline fallback.

A tiny checkpoint is a real Hugging Face folder (config.json, model.safetensors, tokenizer.json with a chat
template, generation_config.json), so it goes through exactly the loader a real checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int):
    """A byte-level tokenizer: specials, then the 256 byte symbols, then filler ids up to ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def build_tiny_checkpoint(arch: str, out: Path, *, seed: int = 0, dtype: str = "float32", **overrides) -> Path:
    """Write a random-weight tiny checkpoint of the registered architecture ``arch`` (a model_type) to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from edgepack.architectures import ARCHITECTURES

    spec = ARCHITECTURES.get(arch)
    config = spec.tiny_config(**overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random init gives near-uniform logits; a wider spread makes parity checks discriminating.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model = model.to(getattr(torch, dtype))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_new_tokens=16, do_sample=False).save_pretrained(out)
    tokenizer = build_tokenizer(config.vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "<|im_end|>",
                "pad_token": "<pad>",
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": config.max_position_embeddings,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            indent=2,
        )
    )
    return out
