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


# --- Ministral 3 as it ships: the mistral3 vision-language wrapper, FP8 or BF16, tekken ------------------------

TEKKEN_SOURCE = "tekken_240911.json"  # a real tekken file from the mistral-common wheel
TEKKEN_SPECIALS = 1000  # tekken reserves the first 1000 ids for control tokens
TINY_TEKKEN_VOCAB = TEKKEN_SPECIALS + 536  # the 256 bytes and the first 280 merges


def tiny_mistral3_config(**text_overrides):
    from transformers import Mistral3Config, PixtralVisionConfig

    from edgepack.architectures.mistral import tiny_ministral3

    text = tiny_ministral3(**{"vocab_size": TINY_TEKKEN_VOCAB, "bos_token_id": 1, "eos_token_id": 2,
                              "pad_token_id": 11, **text_overrides})  # fmt: skip
    vision = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
        image_size=32, patch_size=8,
    )  # fmt: skip
    return Mistral3Config(text_config=text, vision_config=vision, image_token_index=10, spatial_merge_size=2)


# edgepack's own prose (Apache-2.0 like the package) for the few training steps of the quantization fixtures.
TRAINING_TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome. The sea is wide and the sky is blue. "
    "A phone runs a small language model when the model fits in memory and each token arrives quickly. "
    "The quick brown fox jumps over the lazy dog. Once upon a time, a fox lived by the sea. "
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    "Write a haiku about the sea: waves fold into foam, salt wind carries gull voices, the tide keeps its time. "
)


def train_briefly(model, ids: list[int], steps: int, seed: int = 0) -> None:
    """A few hundred Adam steps of next-token prediction on ``ids``. Random weights give near-uniform logits,
    where any int4 rounding flips the argmax and a parity gate measures noise; a briefly trained model has
    margins, as real models do."""
    import torch

    g = torch.Generator().manual_seed(seed)
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=g)
        batch = torch.stack([data[s : s + 65] for s in starts])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def build_tiny_mistral3(out: Path, *, fp8: str | None = None, seed: int = 0, block: int = 32,
                        train_steps: int = 0) -> Path:  # fmt: skip
    """A random tiny ``Mistral3ForConditionalGeneration`` folder in the hub's layout.

    Tensor names as the hub ships them (``language_model.model.*``, ``vision_tower.*``,
    ``multi_modal_projector.*``), in two shards with an index (the decoder's FP8 scales in the second shard, so
    a loader must look across shards). ``fp8``: None (bf16), "tensor" (one ``weight_scale_inv`` per tensor, as
    Ministral 3 Instruct ships) or "block" (``weight_block_size`` [block, block]); static ``activation_scale``
    tensors as the real checkpoints carry. Tokenizer: a truncated copy of a real tekken.json. ``train_steps``:
    train on ``TRAINING_TEXT`` first (``train_briefly``), for fixtures that judge quantization.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Mistral3ForConditionalGeneration

    config = tiny_mistral3_config()
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tiny_tekken(out / "tekken.json")
    if train_steps:
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        tekken = Tekkenizer.from_file(out / "tekken.json")
        train_briefly(model, tekken.encode(TRAINING_TEXT * 8, bos=True, eos=False), train_steps, seed)
    text, rest = {}, {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.text_config.tie_word_embeddings:
            continue
        hub = _hub_name(name)
        tensor = tensor.to(torch.bfloat16).contiguous()
        if fp8 and hub.startswith("language_model.") and hub.endswith("proj.weight"):
            codes, scale = _to_fp8(tensor, block if fp8 == "block" else None)
            text[hub], rest[f"{hub}_scale_inv"] = codes, scale
            rest[hub.replace(".weight", ".activation_scale")] = torch.tensor(0.05, dtype=torch.bfloat16)
        else:
            (text if hub.startswith("language_model.") else rest)[hub] = tensor
    shards = {"model-00001-of-00002.safetensors": text, "model-00002-of-00002.safetensors": rest}
    for name, tensors in shards.items():
        save_file(tensors, str(out / name), metadata={"format": "pt"})
    weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    cfg = config.to_dict()
    cfg["dtype"] = cfg["text_config"]["dtype"] = cfg["vision_config"]["dtype"] = "bfloat16"
    if fp8:
        cfg["quantization_config"] = {
            "quant_method": "fp8", "activation_scheme": "static",
            "weight_block_size": [block, block] if fp8 == "block" else None,
            "modules_to_not_convert": ["model.vision_tower", "model.multi_modal_projector", "lm_head"],
        }  # fmt: skip
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11}))
    return out


def _hub_name(name: str) -> str:
    """transformers 5's names -> the names in the hub's Ministral 3 safetensors."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    if name.startswith("lm_head."):
        return "language_model." + name
    return name.removeprefix("model.")


def _to_fp8(weight, block: int | None):
    """Fine-grained FP8 codes and ``weight_scale_inv`` (the dequantization multiplier), per tensor or per block."""
    import torch

    w = weight.float()
    fmax = torch.finfo(torch.float8_e4m3fn).max
    if block is None:
        scale = w.abs().max() / fmax
        return (w / scale).to(torch.float8_e4m3fn), scale.to(torch.float32)
    rows, cols = w.shape
    blocks = w.reshape(rows // block, block, cols // block, block)
    scale = blocks.abs().amax(dim=(1, 3)) / fmax
    codes = (blocks / scale[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
    return codes, scale.to(torch.float32)


def write_tiny_tekken(path: Path, vocab_size: int = TINY_TEKKEN_VOCAB) -> Path:
    """A truncated copy of the real tekken.json in mistral-common's wheel, in the current file format
    (``special_tokens`` listed, version v13 as Ministral 3's), sized to ``vocab_size`` ids."""
    import mistral_common
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    source = Path(mistral_common.__file__).parent / "data" / TEKKEN_SOURCE
    data = json.loads(source.read_text(encoding="utf-8"))
    inner = vocab_size - TEKKEN_SPECIALS
    # v13 files list their control tokens; these are mistral-common's, in its order ([INST] 3, [/INST] 4, ...).
    specials = [{"rank": i, "token_str": t.value, "is_control": True} for i, t in enumerate(SpecialTokens)]
    data["vocab"] = data["vocab"][:inner]
    data["special_tokens"] = specials
    data["config"].update(num_vocab_tokens=inner, default_vocab_size=vocab_size,
                          default_num_special_tokens=TEKKEN_SPECIALS, version="v13")  # fmt: skip
    data.pop("image", None)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
