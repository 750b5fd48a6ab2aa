"""The tokenizer as the device runtime loads it: tokenizer.json through ``tokenizers``, chat template by Jinja.

transformers' AutoTokenizer can rebuild a pre-tokenizer (Qwen2) and give ids the device never sees, so parity
prompts and the bundles use this loader instead.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from edgepack.errors import CheckpointError


def read_tokenizer(path: Path):
    """``tokenizers.Tokenizer`` of a tokenizer.json; an unreadable file is a CheckpointError naming it."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for any unreadable file
        raise CheckpointError(f"{path} is not a readable tokenizer.json ({exc}). Re-download it.") from None


class DeviceTokenizer:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{self.folder} has no tokenizer.json; edgepack packages tokenizer.json only.")
        self.tokenizer = read_tokenizer(path)
        self.config = _read_json(self.folder / "tokenizer_config.json")
        self.generation = _read_json(self.folder / "generation_config.json")

    @cached_property
    def chat_template(self) -> str | None:
        jinja = self.folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template

    def token_id(self, key: str) -> int | None:
        """bos/eos/pad id: generation_config first (what runtimes read), then the tokenizer config's token."""
        value = self.generation.get(f"{key}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
        token = self.config.get(f"{key}_token")
        if isinstance(token, dict):
            token = token.get("content")
        return self.tokenizer.token_to_id(token) if token else None

    @property
    def eos_ids(self) -> list[int]:
        ids = self.generation.get("eos_token_id")
        ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
        token = self.config.get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token and self.tokenizer.token_to_id(token) is not None:
            ids.append(self.tokenizer.token_to_id(token))
        return sorted({int(i) for i in ids})

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The template rendered by transformers' own renderer (its sandbox, loop controls such as
        ``{% continue %}``, ``strftime_now``, ``raise_exception``), so parity prompts and calibration text are
        what the model card's code produces."""
        if not self.chat_template:
            raise CheckpointError(f"{self.folder} has no chat template; use plain prompts.")
        from jinja2 import TemplateError
        from transformers.utils.chat_template_utils import render_jinja_template

        specials = {k: _content(self.config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}
        try:
            rendered, _ = render_jinja_template([messages], chat_template=self.chat_template,
                                                add_generation_prompt=add_generation_prompt, **specials)  # fmt: skip
        except TemplateError as exc:
            raise CheckpointError(f"{self.folder}: the chat template failed to render: {exc}") from None
        return rendered[0]


def _content(token):
    return token.get("content") if isinstance(token, dict) else (token or "")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
