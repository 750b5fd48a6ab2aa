"""Text quality: a long text teacher-forced through the reference, the quantized eager model and each artifact.

The text (``--text FILE``, or ``builtin``: edgepack's ~2,000-token prose text, written for edgepack and never part
of the calibration set) is tokenized with BOS and cut into consecutive windows that fit every artifact's context.
Each window runs as one prefill from an empty cache. Per artifact: the logit metrics against the reference (as
for the prompts) and the perplexity of the text under the reference and under the artifact (``ppl_ratio``: how
much more surprised the artifact is by the same text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import ConfigError
from edgepack.paths import DATA_DIR

BUILTIN = DATA_DIR / "text" / "eval-prose.txt"
MIN_WINDOW = 16  # a trailing window shorter than this is dropped: too few positions to say anything


@dataclass
class Text:
    source: str
    windows: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)

    def record(self) -> dict:
        return {"source": self.source, "tokens": self.tokens, "windows": len(self.windows)}


def read_text(source: str | Path) -> str:
    """The text ``source`` names, checked before any model or tokenizer is loaded."""
    path = BUILTIN if str(source) == "builtin" else Path(source)
    if not path.is_file():
        raise ConfigError(str(source), ["text file not found; pass a UTF-8 text file or 'builtin'"])
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(source), ["text file is not UTF-8"]) from None


def load_text(source: str | Path, tokenizer, max_len: int) -> Text:
    """``source`` ("builtin" or a UTF-8 text file) as windows of at most ``max_len`` ids."""
    ids = tokenizer.encode(read_text(source))
    bos = tokenizer.token_id("bos")
    ids = ([bos] if bos is not None else []) + ids
    windows = [ids[i : i + max_len] for i in range(0, len(ids), max_len)]
    windows = [w for w in windows if len(w) >= MIN_WINDOW]
    if not windows:
        raise ConfigError(str(source), [f"text is {len(ids)} tokens; at least {MIN_WINDOW} are needed"])
    return Text(str(source), windows)


def eager_logits(model, windows: list[list[int]]) -> list[np.ndarray]:
    """An eager model's logits over each window (one forward each), float32 numpy."""
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in windows]


def nll(logits: list[np.ndarray], windows: list[list[int]]) -> np.ndarray:
    """Negative log-likelihood of every next token of every window (the last position predicts nothing)."""
    out = []
    for lg, ids in zip(logits, windows):
        lg = lg[:-1].astype(np.float64)
        targets = np.asarray(ids[1:])
        top = lg.max(-1)
        lse = np.log(np.exp(lg - top[:, None]).sum(-1)) + top
        out.append(lse - lg[np.arange(len(targets)), targets])
    return np.concatenate(out)


def text_metrics(ref: list[np.ndarray], got: list[np.ndarray], windows: list[list[int]]) -> dict[str, float]:
    """Logit metrics averaged over every position of the text, plus both perplexities and their ratio."""
    from edgepack.parity import metrics

    per = [metrics.compare(r, g) for r, g in zip(ref, got)]
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    merged = {k: float(max(m[k] for m in per)) if k.startswith("max") else
              float(np.average([m[k] for m in per], weights=weights)) for k in per[0]}  # fmt: skip
    ref_nll, got_nll = nll(ref, windows).mean(), nll(got, windows).mean()
    merged.update(ppl_reference=float(np.exp(ref_nll)), ppl=float(np.exp(got_nll)),
                  ppl_ratio=float(np.exp(got_nll - ref_nll)))  # fmt: skip
    return merged
