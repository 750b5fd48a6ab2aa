"""The code book's codes in llama.cpp's block types, exactly (scales rounded to fp16, as every GGUF holds them).

ggml's legacy block types cover 32 consecutive weights of a row each:
- ``Q4_0``: fp16 ``d`` + 16 bytes, ``w = d * (q - 8)``, q in 0..15: a symmetric int4 code ``c`` is ``q = c + 8``.
- ``Q4_1``: fp16 ``d``, fp16 ``m`` + 16 bytes, ``w = d * q + m``: an asymmetric code ``q`` with zero point ``z``
  is ``d = s``, ``m = -s * z``.
- ``Q8_0``: fp16 ``d`` + 32 int8, ``w = d * q``: a symmetric int8 code as it is.
In the 16 bytes of a 4-bit block, byte j holds element j in its low nibble and element j + 16 in its high one.
A code-book group wider than 32 (group 128, a per-row int8 scale) is written as blocks repeating its scale:
the same codes, the same weights. The K-quant types are not used: they re-quantize each block's scale to 6 bits,
so they cannot carry a calibrated method's codes.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

BLOCK = 32
ROWS_PER_CHUNK = 4096  # a 131k-row head packed whole would hold gigabytes of temporaries


def block_type(codes) -> T | None:
    """The block type that carries ``codes`` exactly, or None (the caller writes a float or re-quantizes)."""
    if codes.group % BLOCK or codes.q.shape[1] % BLOCK:
        return None
    if codes.bits == 4:
        return T.Q4_0 if codes.symmetric else T.Q4_1
    if codes.bits == 8 and codes.symmetric:
        return T.Q8_0
    return None


def pack(codes, kind: T) -> np.ndarray:
    """uint8 [rows, blocks * block bytes]: ``codes`` in ``kind``'s blocks (see the module docstring)."""
    rows, cols = codes.q.shape
    out = np.empty((rows, cols // BLOCK * _block_bytes(kind)), np.uint8)
    for start in range(0, rows, ROWS_PER_CHUNK):
        part = slice(start, start + ROWS_PER_CHUNK)
        out[part] = _pack_rows(codes, part, kind)
    return out


def _block_bytes(kind: T) -> int:
    from gguf.constants import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[kind][1]


def _pack_rows(codes, part: slice, kind: T) -> np.ndarray:
    q = codes.q[part].numpy()
    rows, cols = q.shape
    blocks = cols // BLOCK
    repeat = codes.group // BLOCK  # blocks per code-book group
    scale = np.repeat(codes.scale[part].float().numpy(), repeat, axis=1)  # [rows, blocks]
    d = scale.astype(np.float16).reshape(rows, blocks, 1).view(np.uint8)
    q = q.reshape(rows, blocks, BLOCK)
    if kind == T.Q8_0:
        body = q.astype(np.int8).view(np.uint8)
        return np.concatenate([d, body], axis=-1).reshape(rows, -1)
    if kind == T.Q4_0:
        nibbles = (q.astype(np.int16) + 8).astype(np.uint8)
        head = d
    else:  # Q4_1
        zero = np.repeat(codes.zero[part].numpy().astype(np.float32), repeat, axis=1)
        m = (-scale * zero).astype(np.float16).reshape(rows, blocks, 1).view(np.uint8)
        nibbles = q.astype(np.uint8)
        head = np.concatenate([d, m], axis=-1)
    body = nibbles[..., :16] | (nibbles[..., 16:] << 4)
    return np.concatenate([head, body], axis=-1).reshape(rows, -1)


def unpermute_rows(x: np.ndarray, heads: int) -> np.ndarray:
    """Undo ``permute_rows``: the reader's half of the q/k row order."""
    return x.reshape(heads, x.shape[0] // heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def permute_rows(x, heads: int):
    """llama.cpp's q/k row order for its interleaved ("normal") rope: within each head, rows (i, i + d/2) of
    Hugging Face's rotate-half layout become neighbours (convert_hf_to_gguf's ``LlamaModel.permute``). Works on
    torch tensors and numpy arrays; codes, scales and zero points are permuted alike, so codes stay exact."""
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
