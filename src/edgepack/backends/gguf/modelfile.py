"""The ollama ``Modelfile`` beside the .gguf: ``ollama create NAME -f Modelfile`` in that folder makes a model.

TEMPLATE is written for the chat formats whose ollama (Go) template is standard (ChatML, Llama 3); for others it
is left out and ollama derives it from the Jinja chat template inside the GGUF, which it matches against its own
template library. Stops: the tokens that end a turn (generation_config's EOS ids and the template's end-of-turn
markers). num_ctx: the export's --max-seq-len.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
TEMPLATES = {"<|im_start|>": CHATML, "<|start_header_id|>": LLAMA3}  # marker in the Jinja template -> Go template
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}


def modelfile(gguf_name: str, tokenizer_dir: Path, max_seq_len: int, eos: tuple[int, ...]) -> str:
    template = _chat_template(tokenizer_dir)
    lines = ["# ollama: `ollama create NAME -f Modelfile` in this folder; written by edgepack", f"FROM ./{gguf_name}", ""]
    go = next((t for marker, t in TEMPLATES.items() if marker in template), None)
    if go:
        lines += [f'TEMPLATE """{go}"""', ""]
    else:
        lines += ["# TEMPLATE: ollama reads the chat template inside the GGUF", ""]
    for stop in _stops(tokenizer_dir, template, eos):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    lines.append(f"PARAMETER num_ctx {max_seq_len}")
    lines += [f"PARAMETER {ours} {value}" for ours, value in _sampling(tokenizer_dir)]
    return "\n".join(lines) + "\n"


def _chat_template(tokenizer_dir: Path) -> str:
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = _json(tokenizer_dir / "tokenizer_config.json")
    template = config.get("chat_template") or ""
    return template if isinstance(template, str) else json.dumps(template)


def _stops(tokenizer_dir: Path, template: str, eos: tuple[int, ...]) -> list[str]:
    """End-of-turn strings: the export's EOS tokens, then the known markers the template uses."""
    names = _token_names(tokenizer_dir)
    stops = [names[i] for i in eos if i in names]
    stops += [m for m in END_OF_TURN if m in template and m in names.values()]
    return list(dict.fromkeys(stops))


def _token_names(tokenizer_dir: Path) -> dict[int, str]:
    data = _json(tokenizer_dir / "tokenizer.json")
    return {t["id"]: t["content"] for t in data.get("added_tokens", [])}


def _sampling(tokenizer_dir: Path) -> list[tuple[str, object]]:
    config = _json(tokenizer_dir / "generation_config.json")
    if not config.get("do_sample"):
        return []
    return [(ours, config[theirs]) for theirs, ours in SAMPLING.items() if config.get(theirs) is not None]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
