"""Calibration text for GPTQ: the built-in set or a user file, turned into ``samples`` windows of ``seq_len`` ids.

Files (``--calibration FILE``):
- ``.txt``: plain text; documents are separated by blank lines;
- ``.jsonl``: one JSON object a line, ``{"text": ...}`` or ``{"messages": [{"role", "content"}, ...]}`` (rendered
  with the model's chat template, as the app will send it).
The built-in set (``edgepack/data/calibration/builtin.jsonl``) was written for edgepack and ships under the
project's Apache-2.0 licence: prose on varied subjects, chat exchanges, code and lists.

Windows: every document is tokenized (BOS first where the tokenizer has one), the documents are concatenated in
order, and ``samples`` windows of ``seq_len`` ids are taken at evenly spaced starts (overlapping when the text is
shorter than ``samples * seq_len``, which the record reports as the share of distinct tokens).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import ConfigError
from edgepack.paths import DATA_DIR

BUILTIN = DATA_DIR / "calibration" / "builtin.jsonl"
MIN_TOKENS = 64  # below this no window is long enough to estimate anything


@dataclass(frozen=True)
class Calibration:
    source: str  # "builtin" or the file's path
    digest: str  # sha256 of the file's bytes
    documents: tuple  # str (plain text) or tuple of messages (chat)

    def record(self) -> dict:
        return {"source": self.source, "digest": self.digest, "documents": len(self.documents)}


def load_calibration(path: str | Path | None = None) -> Calibration:
    """The built-in set (``path`` None) or a user's file; every problem in the file reported at once."""
    file = BUILTIN if path is None else Path(path)
    source = "builtin" if path is None else str(path)
    if not file.is_file():
        raise ConfigError(source, ["calibration file not found; pass a .txt or .jsonl file"])
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, ["calibration file is not UTF-8 text"]) from None
    if file.suffix == ".jsonl":
        documents, problems = _jsonl(text)
    elif file.suffix in (".txt", ".md", ""):
        documents, problems = tuple(p.strip() for p in text.split("\n\n") if p.strip()), []
    else:
        problems, documents = [f"unknown calibration format {file.suffix!r}; use .txt or .jsonl"], ()
    if not problems and not documents:
        problems.append("calibration file holds no text")
    if problems:
        raise ConfigError(source, problems)
    return Calibration(source, hashlib.sha256(raw).hexdigest(), documents)


def _jsonl(text: str) -> tuple[tuple, list[str]]:
    documents, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {n}: not JSON ({exc.msg})")
            continue
        if isinstance(item, dict) and set(item) == {"text"} and isinstance(item["text"], str):
            documents.append(item["text"])
        elif isinstance(item, dict) and set(item) == {"messages"} and _messages_ok(item["messages"]):
            documents.append(tuple((m["role"], m["content"]) for m in item["messages"]))
        else:
            problems.append(f'line {n}: expected {{"text": str}} or {{"messages": [{{"role", "content"}}, ...]}}')
    return tuple(documents), problems


def _messages_ok(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values())
        for m in messages
    )


def token_stream(calibration: Calibration, tokenizer) -> list[int]:
    """All documents' ids in order: chat ones through the chat template (skipped when the model has none)."""
    bos = tokenizer.token_id("bos")
    ids: list[int] = []
    for doc in calibration.documents:
        if isinstance(doc, str):
            part = tokenizer.encode(doc)
            ids += ([bos] if bos is not None else []) + part
        elif tokenizer.chat_template:
            messages = [{"role": r, "content": c} for r, c in doc]
            ids += tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=False))
        else:
            ids += ([bos] if bos is not None else []) + tokenizer.encode("\n\n".join(c for _, c in doc))
    return ids


def windows(ids: list[int], samples: int, seq_len: int, source: str = "calibration"):
    """``samples`` windows [samples, seq_len] (torch int64) at evenly spaced starts over ``ids``."""
    import torch

    if len(ids) < MIN_TOKENS:
        raise ConfigError(source, [f"calibration text is {len(ids)} tokens; at least {MIN_TOKENS} are needed"])
    seq_len = min(seq_len, len(ids))
    span = len(ids) - seq_len
    starts = [round(i * span / max(samples - 1, 1)) for i in range(samples)]
    return torch.tensor([ids[s : s + seq_len] for s in starts], dtype=torch.int64)
