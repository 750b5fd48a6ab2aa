"""Logit comparison metrics. All take [positions, vocab] arrays: reference first, candidate second."""

from __future__ import annotations

import numpy as np

METRICS = ("max_abs_diff", "mean_abs_diff", "cosine", "top1", "top5_overlap", "kl", "greedy_agreement")


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Per-position metrics averaged over positions (max_abs_diff is the max)."""
    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, export {got.shape}")
    diff = np.abs(ref - got)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine": float(np.mean(_cosine(ref, got))),
        "top1": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
        "top5_overlap": float(np.mean(_topk_overlap(ref, got, 5))),
        "kl": float(np.mean(kl_divergence(ref, got))),
    }


def kl_divergence(ref_logits: np.ndarray, got_logits: np.ndarray) -> np.ndarray:
    """KL(reference || export) per position, in nats."""
    log_p = _log_softmax(ref_logits)
    log_q = _log_softmax(got_logits)
    return np.maximum(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1), 0.0)


def greedy_agreement(ref_tokens: list[int], got_tokens: list[int]) -> float:
    """The fraction of reference greedy tokens the export reproduces before it first diverges."""
    if not ref_tokens:
        return 1.0
    n = 0
    for a, b in zip(ref_tokens, got_tokens):
        if a != b:
            break
        n += 1
    return n / len(ref_tokens)


def aggregate(per_prompt: list[dict[str, float]]) -> dict[str, float]:
    """Combine prompts: max of maxima, mean of everything else."""
    if not per_prompt:
        return {}
    keys = per_prompt[0].keys()
    return {
        k: float(max(m[k] for m in per_prompt)) if k.startswith("max") else float(np.mean([m[k] for m in per_prompt]))
        for k in keys
    }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-30)


def _topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    k = min(k, a.shape[-1])
    ta = np.argpartition(-a, k - 1, axis=-1)[:, :k]
    tb = np.argpartition(-b, k - 1, axis=-1)[:, :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(ta, tb)])


# threshold key -> (metric, True when the metric must stay at or below the threshold)
THRESHOLDS = {
    "max_abs_diff": ("max_abs_diff", True),
    "min_cosine": ("cosine", False),
    "min_top1": ("top1", False),
    "min_top5_overlap": ("top5_overlap", False),
    "max_kl": ("kl", True),
    "min_greedy_agreement": ("greedy_agreement", False),
}
AT_MOST = {metric: at_most for metric, at_most in THRESHOLDS.values()}
