"""Integer codes: what a quantized weight *is*, before any backend packs it.

One definition for every backend. A weight [rows, cols] is cut along its input dim into groups of
``group`` columns (``group == cols``: per output channel); each group has a float scale and, when asymmetric, an
integer zero point:

- symmetric:  codes in [-2^(b-1), 2^(b-1) - 1] (int8 storage), ``w ~ code * scale``;
  ``scale = shrink * max|w| / (2^(b-1) - 0.5)`` (torchao's mapping at ``shrink = 1``);
- asymmetric: codes in [0, 2^b - 1] (uint8 storage), ``w ~ (code - zero) * scale``; the range always holds 0
  (``lo = shrink * min(w, 0)``, ``hi = shrink * max(w, 0)``), so zero points are integers in the code range, as
  MatMulNBits, Core ML's ``constexpr_blockwise_shift_scale`` and GGUF-style formats need.

``shrink`` < 1 clips outliers; ``clip_search`` picks it per group by the (importance-weighted) squared error of
the rounded group, over ``SHRINKS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHRINKS = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0 down to 0.5
ROWS_PER_CHUNK = 2048  # rows rounded at a time: temporaries stay ~100 MB even for a 131k-row lm_head


@dataclass
class Codes:
    q: torch.Tensor  # int8 (symmetric) or uint8 (asymmetric) [rows, cols]
    scale: torch.Tensor  # float32 [rows, groups]
    zero: torch.Tensor | None  # uint8 [rows, groups]; None when symmetric
    bits: int
    group: int  # columns per group; == cols when per output channel

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols]: the weight these codes stand for (what every backend computes with)."""
        rows, cols = self.q.shape
        g = self.q.float().reshape(rows, cols // self.group, self.group)
        if self.zero is not None:
            g = g - self.zero.float()[..., None]
        return (g * self.scale[..., None]).reshape(rows, cols)


def effective_group(group_size: int | None, cols: int) -> int:
    """Columns per group: the recipe's group size, or the whole row when it is per channel or does not divide
    ``cols`` (the backends then quantize per channel and say so)."""
    return group_size if group_size and cols % group_size == 0 else cols


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def group_params(g: torch.Tensor, bits: int, symmetric: bool, shrink: float | torch.Tensor = 1.0):
    """(scale, zero or None) of groups ``g`` [..., group] at clipping ``shrink``; trailing dim reduced."""
    if symmetric:
        amax = g.abs().amax(-1) * shrink
        scale = (amax / (2 ** (bits - 1) - 0.5)).clamp(min=1e-12)
        return scale, None
    qmax = 2**bits - 1
    lo, hi = g.amin(-1).clamp(max=0) * shrink, g.amax(-1).clamp(min=0) * shrink
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = (-lo / scale).round().clamp(0, qmax)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Codes (float, integral) of ``w`` on the grid ``scale``/``zero``, which broadcast against ``w``."""
    lo, hi = qrange(bits, zero is None)
    q = (w / scale).round()
    if zero is not None:
        q = q + zero
    return q.clamp(lo, hi)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    return (q - zero) * scale if zero is not None else q * scale


def rtn(weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, *, clip_search: bool = False,
        importance: torch.Tensor | None = None) -> Codes:  # fmt: skip
    """Round to nearest, in row chunks. ``importance`` [cols] weights the clip search's error per column
    (GPTQ passes the Hessian's diagonal: the inputs' mean square)."""
    rows, cols = weight.shape
    group = effective_group(group_size, cols)
    parts = [_rtn_rows(weight[i : i + ROWS_PER_CHUNK].float(), bits, group, symmetric, clip_search, importance)
             for i in range(0, rows, ROWS_PER_CHUNK)]  # fmt: skip
    q = torch.cat([p[0] for p in parts])
    scale = torch.cat([p[1] for p in parts])
    zero = None if symmetric else torch.cat([p[2] for p in parts])
    return Codes(q, scale, zero, bits, group)


def group_grid(weight: torch.Tensor, bits: int, group: int, symmetric: bool, clip_search: bool,
               importance: torch.Tensor | None = None):  # fmt: skip
    """(scale [rows, groups], zero or None) for ``weight``, clip-searched per group when asked."""
    rows, cols = weight.shape
    g = weight.float().reshape(rows, cols // group, group)
    if not clip_search:
        return group_params(g, bits, symmetric)
    imp = torch.ones(cols) if importance is None else importance.float()
    imp = imp.reshape(1, cols // group, group)
    best_err = torch.full(g.shape[:2], float("inf"))
    best_scale = torch.empty(g.shape[:2])
    best_zero = None if symmetric else torch.empty(g.shape[:2])
    for shrink in SHRINKS:
        scale, zero = group_params(g, bits, symmetric, shrink)
        z = None if zero is None else zero[..., None]
        err = ((dequantize(quantize(g, scale[..., None], z, bits), scale[..., None], z) - g) ** 2 * imp).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if zero is not None:
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def _rtn_rows(w, bits, group, symmetric, clip_search, importance):
    rows, cols = w.shape
    scale, zero = group_grid(w, bits, group, symmetric, clip_search, importance)
    g = w.reshape(rows, cols // group, group)
    q = quantize(g, scale[..., None], None if zero is None else zero[..., None], bits).reshape(rows, cols)
    return as_storage(q, symmetric), scale.float(), None if zero is None else zero.to(torch.uint8)


def as_storage(q: torch.Tensor, symmetric: bool) -> torch.Tensor:
    return q.to(torch.int8 if symmetric else torch.uint8)
