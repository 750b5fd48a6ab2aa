"""Integer codes computed once, in torch, and packed unchanged by every backend.

``core``: the codes' definition (groups, scales, zero points) and round-to-nearest; ``gptq``: GPTQ on one
matrix; ``calibrate``: GPTQ over a model layer by layer; ``calibration``: the calibration text; ``book``: the
cached code book every backend and the parity harness read.
"""

from edgepack.codes.book import CodeBook, codes_for
from edgepack.codes.core import Codes, rtn

__all__ = ["CodeBook", "Codes", "codes_for", "rtn"]
