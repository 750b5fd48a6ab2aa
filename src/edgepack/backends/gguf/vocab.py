"""The tokenizer inside the GGUF, as llama.cpp's converter writes it from a Hugging Face tokenizer.json.

- Byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen, tekken): ``tokenizer.ggml.model = gpt2``, every id's
  token with its type (added special tokens CONTROL, other added tokens USER_DEFINED, ids past the tokenizer's
  end [PADn] UNUSED), the merges, and ``tokenizer.ggml.pre``: the pre-tokenizer llama.cpp must apply, found as
  the converter finds it, by hashing the tokenization of a fixed probe text (``PRE_TOKENIZERS``).
- BPE with byte fallback (SentencePiece converted: Mistral v0.3, Phi-3, Gemma): ``tokenizer.ggml.model =
  llama`` through gguf's ``LlamaHfVocab`` (scores and types).
Special ids, add-BOS/EOS flags and the chat template come from gguf's ``SpecialVocab`` (tokenizer_config.json,
tokenizer.json, config.json), as in the converter.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

from edgepack.errors import ExportError

# convert_hf_to_gguf's probe text and the hashes of its tokenization for the families edgepack exports (copied
# from llama.cpp's conversion/base.py ``get_vocab_base_pre``; a tokenizer not listed gets llama.cpp's default
# pre-tokenizer, and the export says so).
PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 "
    "33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
INERT_MERGE = "edgepack inert"
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen 1.5 - 2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen 3
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo, Ministral 3
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
}


def write_vocab(writer, tokenizer_dir: Path, vocab_size: int) -> list[str]:
    """Write the tokenizer keys; returns notes (e.g. a pre-tokenizer llama.cpp does not know)."""
    import gguf

    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        notes = _llama_vocab(writer, tokenizer_dir, vocab_size)
    elif model.get("type") == "BPE":
        notes = _gpt2_vocab(writer, tokenizer_dir, vocab_size)
    else:
        raise ExportError(f"The gguf target writes BPE tokenizers; this one is {model.get('type')!r}. "
                          "Export another target.")  # fmt: skip
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        special.load_merges = False  # else gguf warns
        if not model.get("byte_fallback"):
            # llama.cpp refuses a gpt2 vocabulary without merges and gguf refuses an empty array: one merge
            # that can never apply (its left part is several characters that no merge forms) changes nothing.
            writer.add_token_merges([INERT_MERGE])
    special.add_to_gguf(writer, quiet=True)
    return notes


def _gpt2_vocab(writer, tokenizer_dir: Path, vocab_size: int) -> list[str]:
    """Read with the tokenizers library from tokenizer.json itself (transformers' AutoTokenizer may substitute
    a model-specific class that adds tokens: Qwen2Tokenizer does)."""
    import gguf
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ExportError(f"The tokenizer has ids up to {max(vocab.values())}, the model's embedding {vocab_size} rows: "
                          "llama.cpp would refuse the file. Export another target.")  # fmt: skip
    reverse = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL if token not in added
                         else gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)  # fmt: skip
    digest = sha256(str(tokenizer.encode(PROBE).ids).encode()).hexdigest()
    pre = PRE_TOKENIZERS.get(digest)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if pre:
        return []
    return [f"tokenizer: a pre-tokenizer llama.cpp does not know (probe hash {digest[:16]}); llama.cpp splits text "
            "with its default rules, so its token ids may differ from the reference's on some text"]  # fmt: skip


def _llama_vocab(writer, tokenizer_dir: Path, vocab_size: int) -> list[str]:
    """SentencePiece-style BPE (byte fallback) as llama.cpp's "llama" vocabulary, read with the tokenizers library
    (gguf's LlamaHfVocab goes through AutoTokenizer, which transformers 5 rebuilds from the config with three
    tokens). llama.cpp merges by score: a converted SentencePiece BPE keeps its pieces in score order, so a
    piece's score is minus its id; byte pieces (<0xNN>) are BYTE, the unknown piece UNKNOWN."""
    import re

    import gguf
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"The tokenizer has ids up to {max(vocab.values())}, the model's embedding {vocab_size} rows: "
                          "llama.cpp would refuse the file. Export another target.")  # fmt: skip
    reverse = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()}
    unk = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"].get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            kind = gguf.TokenType.UNUSED
        else:
            tokens.append(token)
            kind = (gguf.TokenType.UNKNOWN if token == unk else gguf.TokenType.BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", token)
                    else gguf.TokenType.NORMAL if token not in added
                    else gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)  # fmt: skip
        types.append(kind)
        scores.append(-float(i) if kind == gguf.TokenType.NORMAL else 0.0)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    return []
