"""Stage 1b, tokenizer: package the checkpoint's tokenizer the way each runtime reads it, then prove it.

The export's ``tokenizer/`` folder holds, per source:
- ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``): read by onnxruntime-genai,
  swift-transformers and edgepack's parity prompts. Converted when the checkpoint has none: from Mistral's
  ``tekken.json`` (transformers' ``MistralConverter``) or a sentencepiece ``tokenizer.model``.
- ``tekken.json`` or ``tokenizer.model`` as shipped: read natively by ExecuTorch's LLM runner (its tokenizer
  library reads tekken, sentencepiece and HF json).

Parity cannot see a wrong tokenizer (reference and artifact get the same ids), so every packaged tokenizer.json
is checked here against the reference tokenization of the checkpoint on a fixed set of strings (accents, emoji,
code, leading spaces, digits) and on a chat turn (control tokens): mistral-common for tekken folders,
sentencepiece itself for sentencepiece folders, transformers' tokenizer with the checkpoint's own settings
otherwise. BOS is part of the check: when the reference adds BOS and the tokenizer.json does not, its post-processor
is made to (runtimes that only read tokenizer.json would otherwise start without it). A mismatch fails the export
with the string and both id lists.

Known limit, not checked: a literal control-token string inside user text (e.g. "[INST]") is read as the control
token by every runtime that renders a text chat template and tokenizes it (mistral-common builds ids directly).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

from edgepack.backends import backends
from edgepack.checkpoint import NATIVE_FILES
from edgepack.errors import CheckpointError

FIDELITY_STRINGS = (
    "Hello world",
    " leading space",
    "  two leading spaces and  a  double gap",
    "Café déjà vu, naïve Zoë, Ærøskøbing, Straße",
    "emoji 🙂🚀 and a flag 🇫🇷",
    "def f(x):\n    return x ** 2\n\n\tpass  # tab and four spaces",
    "1234567 + 89 = 1234656, 3.14159, 2026-11-30",
    "日本語のテキスト と 中文 и русский",
    "trailing spaces   ",
    "line one\nline two\r\nline three",
)
CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
# tokenizer_class values swift-transformers resolves (a "Fast" suffix is dropped first), as of its 0.1 releases
# that apps still pin: TokenizerModel.knownTokenizers in
# https://github.com/huggingface/swift-transformers/blob/main/Sources/Tokenizers/Tokenizer.swift (later releases
# add TokenizersBackend, RobertaTokenizer, XLMRobertaTokenizer, ...). transformers loads every one of them.
SWIFT_TRANSFORMERS_CLASSES = frozenset({
    "BertTokenizer", "CodeGenTokenizer", "CodeLlamaTokenizer", "CohereTokenizer", "FalconTokenizer", "GemmaTokenizer",
    "GPT2Tokenizer", "LlamaTokenizer", "PreTrainedTokenizer", "Qwen2Tokenizer", "T5Tokenizer", "WhisperTokenizer",
})  # fmt: skip


@dataclass
class TokenizerPackage:
    """What ``package_tokenizer`` wrote and checked; recorded in export.json."""

    source: str  # "tekken" | "sentencepiece" | "tokenizer.json"
    files: list[str]  # names in the tokenizer folder
    runtime_files: dict[str, str]  # runtime -> the file it reads
    converted: bool  # tokenizer.json was made by edgepack
    adds_bos: bool
    bos_fixed: bool  # the post-processor was changed to add BOS
    chat_template: str | None  # "checkpoint" | "mistral-common" | None
    checked_strings: int
    reference: str


@dataclass
class _Reference:
    name: str
    encode: Callable[[str], list[int]]  # plain text, special tokens (BOS) as the reference adds them
    chat: Callable[[list[dict]], list[int]] | None  # a chat request's ids, control tokens included


def package_tokenizer(checkpoint, out: Path, needs_json: bool = True) -> TokenizerPackage:
    """Write ``checkpoint``'s tokenizer into ``out`` for every runtime and check it (``needs_json``: a target
    that reads tokenizer.json is exported, so it must reproduce the reference)."""
    from edgepack.checkpoint import TOKENIZER_FILES, require_tokenizer

    src = checkpoint.path
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES + NATIVE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    source = "tekken" if (src / "tekken.json").is_file() else "sentencepiece" if (src / "tokenizer.model").is_file() \
        else "tokenizer.json"  # fmt: skip
    require_tokenizer(checkpoint)
    converted = not (out / "tokenizer.json").is_file()
    if converted:
        _convert(source, src, out)
    _check_vocab(out / "tokenizer.json", checkpoint)
    template = _chat_template(source, src, out)
    _write_tokenizer_config(checkpoint, source, out)
    _portable_class(out)
    reference = _reference(source, src)
    bos_fixed = _fix_bos(out / "tokenizer.json", reference)
    checked = _check(out, reference, source) if needs_json else 0
    native = next((n for n in NATIVE_FILES if (out / n).is_file()), "tokenizer.json")
    return TokenizerPackage(
        source=source,
        files=sorted(p.name for p in out.iterdir()),
        runtime_files={b.runtime: native if b.native_tokenizer else "tokenizer.json" for b in backends()},
        converted=converted,
        adds_bos=bool(reference.encode("a")[:1] == [_bos_id(out)]),
        bos_fixed=bos_fixed,
        chat_template=template,
        checked_strings=checked,
        reference=reference.name,
    )


def record(package: TokenizerPackage) -> dict:
    return asdict(package)


# --- conversion ---------------------------------------------------------------------------------------------


def _convert(source: str, src: Path, out: Path) -> None:
    if source == "tekken":
        from transformers.integrations.mistral.tokenizer import MistralConverter

        MistralConverter(str(src / "tekken.json")).converted().save(str(out / "tokenizer.json"))
        return
    from transformers import AutoTokenizer

    try:  # transformers' sentencepiece -> tokenizers conversion; the check below decides whether it is faithful
        tok = AutoTokenizer.from_pretrained(src, use_fast=True)
        tok._tokenizer.save(str(out / "tokenizer.json"))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{src / 'tokenizer.model'} could not be converted to tokenizer.json ({exc}). Add the model's "
            "tokenizer.json to the folder, or export --target executorch only (its runner reads tokenizer.model)."
        ) from None


def _chat_template(source: str, src: Path, out: Path) -> str | None:
    """The checkpoint's own template when it has one; for tekken folders, mistral-common's instruct format."""
    config = _read_json(src / "tokenizer_config.json")
    if (out / "chat_template.jinja").is_file() or config.get("chat_template"):
        return "checkpoint"
    if (src / "chat_template.json").is_file():
        template = _read_json(src / "chat_template.json").get("chat_template")
        if template:
            (out / "chat_template.jinja").write_text(template, encoding="utf-8")
            return "checkpoint"
    if source != "tekken":
        return None
    from mistral_common.integrations.chat_templates.chat_templates import convert_tokenizer_to_chat_template

    (out / "chat_template.jinja").write_text(convert_tokenizer_to_chat_template(str(src / "tekken.json")))
    return "mistral-common"


def _write_tokenizer_config(checkpoint, source: str, out: Path) -> None:
    """tokenizer_config.json for folders that ship none (tekken, sentencepiece): special tokens and BOS policy."""
    path = out / "tokenizer_config.json"
    if path.is_file():
        return
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": checkpoint.context_length,
        "edgepack_converted_from": "tekken.json" if source == "tekken" else "tokenizer.model",
    }  # fmt: skip
    if (out / "chat_template.jinja").is_file():
        config["chat_template"] = (out / "chat_template.jinja").read_text(encoding="utf-8")
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _portable_class(out: Path) -> None:
    """A tokenizer_class every runtime that reads tokenizer_config.json knows. transformers 5 saves its generic
    ``TokenizersBackend``, which swift-transformers (0.1) refuses ("unsupportedTokenizer"); a BPE tokenizer.json
    is then named ``PreTrainedTokenizerFast``, which both load from tokenizer.json alone."""
    path = out / "tokenizer_config.json"
    config = _read_json(path)
    name = config.get("tokenizer_class")
    if not isinstance(name, str) or name.replace("Fast", "") in SWIFT_TRANSFORMERS_CLASSES:
        return
    model = _read_json(out / "tokenizer.json").get("model") or {}
    if model.get("type") != "BPE":
        return  # a Unigram/WordPiece model needs its own class; none of the supported families ships one unnamed
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["edgepack_tokenizer_class"] = name  # what the checkpoint said
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- the reference tokenization ------------------------------------------------------------------------------


def _reference(source: str, src: Path) -> _Reference:
    if source == "tekken":
        return _tekken_reference(src / "tekken.json")
    if source == "sentencepiece" and not (src / "tokenizer.json").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        add_bos = _read_json(src / "tokenizer_config.json").get("add_bos_token", True)
        return _Reference("sentencepiece", lambda s: [sp.bos_id()] * bool(add_bos) + sp.encode(s), None)
    return _transformers_reference(src)


def _tekken_reference(path: Path) -> _Reference:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    try:
        mistral = MistralTokenizer.from_file(str(path))
    except (ValueError, KeyError, AssertionError) as exc:
        raise CheckpointError(f"{path} is not a tekken file mistral-common can read ({exc}). Re-download it.") from None
    tekken = mistral.instruct_tokenizer.tokenizer

    def chat(messages):
        return mistral.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens

    return _Reference("mistral-common", lambda s: tekken.encode(s, bos=True, eos=False), chat)


def _transformers_reference(src: Path) -> _Reference:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"transformers cannot load the tokenizer in {src} ({exc}). Fix the tokenizer files.") from None

    # The checkpoint's stated BOS policy wins over a tokenizer class that ignores it (transformers 5's generic
    # TokenizersBackend does not read add_bos_token).
    add_bos = _read_json(src / "tokenizer_config.json").get("add_bos_token") and tok.bos_token_id is not None

    def encode(text):
        ids = list(tok(text, add_special_tokens=True)["input_ids"])
        return [tok.bos_token_id] + ids if add_bos and ids[:1] != [tok.bos_token_id] else ids

    def chat(messages):
        return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))

    return _Reference("transformers", encode, chat if tok.chat_template else None)


# --- BOS and the check ---------------------------------------------------------------------------------------


def _fix_bos(path: Path, reference: _Reference) -> bool:
    """Make tokenizer.json add the reference's leading BOS (TemplateProcessing); True when it was changed."""
    from tokenizers import processors

    from edgepack.tokenizer import read_tokenizer

    tok = read_tokenizer(path)
    want, got = reference.encode("a"), tok.encode("a", add_special_tokens=True).ids
    if not want or want[0] == (got[0] if got else None) or want[1:] != got:
        return False
    bos = tok.id_to_token(want[0])
    template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, want[0])])
    tok.post_processor = template if tok.post_processor is None else processors.Sequence([tok.post_processor, template])
    tok.save(str(path))
    return True


def _check(out: Path, reference: _Reference, source: str) -> int:
    from edgepack.tokenizer import DeviceTokenizer

    device = DeviceTokenizer(out)
    problems = []
    for text in FIDELITY_STRINGS:
        want = list(reference.encode(text))
        got = device.tokenizer.encode(text, add_special_tokens=True).ids
        if want != got:
            problems.append((text, want, got))
    checked = len(FIDELITY_STRINGS)
    if reference.chat is not None and device.chat_template:
        want = list(reference.chat(CHAT_MESSAGES))
        got = device.encode(device.apply_chat_template(CHAT_MESSAGES))
        checked += 1
        if want != got:
            problems.append(("<chat: " + CHAT_MESSAGES[0]["content"] + ">", want, got))
    if problems:
        text, want, got = problems[0]
        raise CheckpointError(
            f"The packaged tokenizer.json ({'converted from ' + source if source != 'tokenizer.json' else 'as shipped'})"
            f" tokenizes {text!r} as {got} where the reference ({reference.name}) gives {want}"
            f"{f'; {len(problems) - 1} more of {checked} strings differ' if len(problems) > 1 else ''}. "
            "onnxruntime-genai and swift-transformers would feed the model wrong ids. Ship a tokenizer.json that "
            "matches the model's tokenizer, or export --target executorch only (its runner reads "
            f"{'/'.join(NATIVE_FILES)})."
        )
    return checked


def _check_vocab(path: Path, checkpoint) -> None:
    """A tokenizer whose ids run past the model's embedding table would index out of bounds on device."""
    from edgepack.tokenizer import read_tokenizer

    size = read_tokenizer(path).get_vocab_size(with_added_tokens=True)
    vocab = checkpoint.text_config_dict.get("vocab_size")
    if vocab and size > vocab:
        raise CheckpointError(
            f"The tokenizer of {checkpoint.path} has {size} ids but the model has {vocab} embeddings: ids past "
            f"{vocab - 1} would index outside the embedding table. Use the tokenizer that belongs to the model."
        )


def _bos_id(out: Path) -> int | None:
    from edgepack.tokenizer import DeviceTokenizer

    return DeviceTokenizer(out).token_id("bos")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
