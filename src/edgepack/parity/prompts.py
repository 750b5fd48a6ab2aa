"""Parity prompts: a built-in set (chat-templated and plain, plus one longer than the sliding window when the
model has one) or a user file (``--prompts FILE``: YAML/JSON list of strings or of {"text"} / {"messages"})."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import ConfigError

BUILTIN_CHAT = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
]
BUILTIN_PLAIN = [
    "The quick brown fox jumps over the lazy dog. Once upon a time,",
    "def fibonacci(n):\n    ",
]
LONG_TEXT = (
    "On-device language models trade size for speed: every layer that runs on the phone must fit in the memory "
    "an app may use, and every token must arrive quickly enough to read. Quantization shrinks weights, the key "
    "and value cache grows with context, and a sliding attention window bounds what each layer looks back at. "
)


@dataclass(frozen=True)
class Prompt:
    name: str
    ids: tuple[int, ...]


def builtin_prompts(tokenizer, sliding_window: int | None, max_len: int) -> list[Prompt]:
    """Token ids of the built-in prompts, each cut to ``max_len`` tokens."""
    prompts = []
    if tokenizer.chat_template:
        for i, text in enumerate(BUILTIN_CHAT):
            chat = tokenizer.apply_chat_template([{"role": "user", "content": text}])
            prompts.append(Prompt(f"chat-{i}", tuple(tokenizer.encode(chat))))
    for i, text in enumerate(BUILTIN_PLAIN):
        prompts.append(Prompt(f"plain-{i}", tuple(_with_bos(tokenizer, tokenizer.encode(text)))))
    if sliding_window:
        ids = tokenizer.encode(LONG_TEXT)
        while len(ids) <= sliding_window + 8:
            ids = ids + tokenizer.encode(LONG_TEXT)
        ids = _with_bos(tokenizer, ids)[: max(sliding_window + 8, 2)]
        prompts.append(Prompt("past-window", tuple(ids)))
    return [Prompt(p.name, p.ids[:max_len]) for p in prompts if p.ids]


def read_prompts(path: Path) -> list:
    """The prompts file's entries, checked (every problem at once) before any model or tokenizer is loaded."""
    from edgepack.config import read_data

    data = read_data(Path(path))
    if not isinstance(data, list) or not data:
        raise ConfigError(str(path), ["expected a non-empty list of prompts"])
    problems = [
        f"[{i}]: expected a string, {{text: ...}} or {{messages: [...]}}"
        for i, item in enumerate(data)
        if not (isinstance(item, str) or (isinstance(item, dict) and set(item) in ({"text"}, {"messages"})))
    ]
    if problems:
        raise ConfigError(str(path), problems)
    return data


def load_prompts(path: Path, tokenizer, max_len: int) -> list[Prompt]:
    prompts = []
    for i, item in enumerate(read_prompts(path)):
        if isinstance(item, str) or "text" in item:
            ids = _with_bos(tokenizer, tokenizer.encode(item if isinstance(item, str) else item["text"]))
        else:
            ids = tokenizer.encode(tokenizer.apply_chat_template(item["messages"]))
        prompts.append(Prompt(f"prompt-{i}", tuple(ids[:max_len])))
    return prompts


def _with_bos(tokenizer, ids: list[int]) -> list[int]:
    bos = tokenizer.token_id("bos")
    return [bos] + ids if bos is not None and (not ids or ids[0] != bos) else ids
