"""GPTQ (Frantar et al., 2022) on one weight matrix, with static groups and act-order.

Each column is rounded in turn and its rounding error spread over the columns not yet rounded, weighted by the
inverse Hessian of the layer's inputs (``H = 2 X^T X / n``), so the layer's *output* error is minimised rather
than the weights'. Follows the reference implementation (IST-DASLab/gptq) and AutoGPTQ:

- act-order: columns are visited by decreasing ``diag(H)`` (the most active inputs first, while most columns are
  still free to absorb their error);
- static groups: every group's scale and zero point are fixed from the original weights before any column moves
  (clip-searched, weighted by ``diag(H)``, when asked). Together with act-order this keeps groups contiguous in the
  input dim, which is what MatMulNBits, Core ML's block quantization and XNNPACK's groupwise kernels store; the
  ``g_idx`` permutation AutoGPTQ writes for act-order without static groups has no place in those formats;
- damping: ``damping * mean(diag(H))`` added to the diagonal; doubled up to 4 times if the Cholesky factorisation
  still fails (a degenerate calibration set), which is reported, never silent;
- columns no input ever reached (``diag(H) == 0``) quantize to zero, as in the reference.
"""

from __future__ import annotations

import torch

from edgepack.codes.core import Codes, as_storage, dequantize, effective_group, group_grid, quantize
from edgepack.errors import ExportError

BLOCK = 128  # columns updated lazily together (the reference's blocksize)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, *,
         damping: float = 0.01, act_order: bool = True, clip_search: bool = True) -> tuple[Codes, float]:  # fmt: skip
    """Codes for ``weight`` [rows, cols] given its inputs' ``hessian`` [cols, cols]; also the damping used."""
    w = weight.float().clone()
    rows, cols = w.shape
    group = effective_group(group_size, cols)
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale, zero = group_grid(w, bits, group, symmetric, clip_search, torch.diag(h))
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    h_inv, used = _inverse_cholesky(h, damping)
    group_of = perm // group
    q = torch.empty_like(w)
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.empty(rows, i2 - i1), h_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = group_of[i1 + i]
            s, z = scale[:, g], None if zero is None else zero[:, g]
            qi = quantize(w1[:, i], s, z, bits)
            q[:, i1 + i] = qi
            err = (w1[:, i] - dequantize(qi, s, z)) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ h_inv[i1:i2, i2:]
    codes = torch.empty_like(q)
    codes[:, perm] = q
    zero_codes = None if zero is None else zero.to(torch.uint8)
    return Codes(as_storage(codes, symmetric), scale.float(), zero_codes, bits, group), used


def _inverse_cholesky(h: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """The upper Cholesky factor of ``(H + damping * mean(diag H) I)^-1``, and the damping it took."""
    mean_diag = torch.diag(h).mean()
    eye = torch.eye(h.shape[0])
    for attempt in range(5):
        used = damping * 2**attempt
        try:
            lower = torch.linalg.cholesky(h + used * mean_diag * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True), used
        except torch.linalg.LinAlgError:
            continue
    raise ExportError(
        f"GPTQ could not invert the calibration Hessian even with damping {used:g}: the calibration text is too "
        "short or too repetitive for this model. Pass a longer --calibration file, or use an -rtn recipe."
    )


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)``: the layer's summed squared output error over the calibration inputs (up to
    H's normalisation). What GPTQ minimises; tests compare methods by it."""
    d = (weight.float() - approx.float())
    return float(torch.einsum("ij,jk,ik->", d, hessian.float(), d))
