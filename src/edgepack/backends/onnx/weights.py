"""ONNX weights written tensor by tensor: the graph is traced without them, then each one is quantized (or cast)
and appended to the external data file, so the export never holds a float copy of the model or of its graph.

``trace`` swaps every parameter of the model for a stride-0 stand-in (one element, any shape), traces
``PastPresentCausalLM`` with ``export_params=False`` (the parameters become named graph inputs) and keeps the
real tensors aside; onnxruntime's basic optimizations then fold the graph's constant shape arithmetic while the
weights are still inputs. ``attach`` turns each weight input into what its consumers need:

- ``Transpose -> MatMul`` (a linear layer): ``MatMulNBits`` holding the code book's codes exactly
  (``edgepack.codes``: computed once for every backend), or the transposed float weight;
- ``Gather`` (the embedding table): ``GatherBlockQuantized`` rows of the code book's codes, or the float table;
- anything else (norm weights, biases): the float tensor.
A tied embedding read both ways keeps one float table (lm_head through a Transpose); quantized alike on both sides
(8-bit symmetric per row), the lookup reads the lm_head's MatMulNBits codes (``_shared_lookup``); otherwise each
side gets its own initializer.

MatMulNBits layout (onnxruntime contrib op): ``B`` uint8 [N, blocks, block * bits / 8] (4-bit: two codes a byte,
low nibble first), ``scales`` [N * blocks] in the graph's float type, ``zero_points`` uint8 (4-bit packed per row)
for asymmetric codes; without zero points the op subtracts 8 (4-bit) or 128 (8-bit). A partial last block is
padded with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Traced:
    proto: object  # onnx.ModelProto whose weights are graph inputs
    weights: dict  # graph input name -> the real torch tensor
    dtype: str  # "float32" | "float16": the graph's float type


class ExternalData:
    """Appends tensors to one external data file and returns initializers pointing into it."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("wb")
        self.offset = 0

    def tensor(self, name: str, array: np.ndarray, onnx_type: int | None = None, dims: tuple | None = None):
        """An initializer for ``array``'s bytes; ``onnx_type``/``dims`` describe packed sub-byte data (uint4)."""
        from onnx import TensorProto, helper

        data = np.ascontiguousarray(array)
        raw = data.tobytes()
        pad = (-self.offset) % 64  # aligned, as onnx's own writer does, so runtimes can map it
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(raw)
        dtype = onnx_type if onnx_type is not None else helper.np_dtype_to_tensor_dtype(data.dtype)
        shape = list(dims if dims is not None else array.shape)
        tensor = TensorProto(name=name, data_type=dtype, dims=shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(raw)
        return tensor

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class NBits:
    """One onnxruntime weight-only quantization setting (a MatMulNBits / GatherBlockQuantized configuration)."""

    bits: int
    block_size: int | None  # None = per output channel (one block spans the whole input dim)
    symmetric: bool
    accuracy_level: int | None  # 4 = int8 activations inside MatMulNBits


def _pack(values, bits: int) -> bytes:
    import numpy as np

    flat = values.reshape(-1).astype(np.uint8)
    if bits == 8:
        return flat.tobytes()
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return ((flat[0::2] & 0xF) | ((flat[1::2] & 0xF) << 4)).astype(np.uint8).tobytes()


def trace(model, wrapper_cls, example_inputs, names: dict, dynamic_axes: dict, opset: int, dtype) -> Traced:
    """The weightless graph of ``wrapper_cls(model)`` and the real tensors its weight inputs stand for."""
    import tempfile
    import warnings

    import onnx
    import torch

    from edgepack.weights import swap_for_stand_ins

    real = swap_for_stand_ins(model, dtype)
    wrapper = wrapper_cls(model).eval()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        torch.onnx.export(
            wrapper, example_inputs, str(path), dynamo=False, export_params=False, do_constant_folding=False,
            input_names=names["inputs"], output_names=names["outputs"], dynamic_axes=dynamic_axes,
            opset_version=opset,
        )  # fmt: skip
        # fp16: the CPU provider would save its own fp16->fp32 Casts into the graph; the file stays portable instead.
        proto = onnx.load(str(_basic_optimizations(path) if dtype == torch.float32 else path))
    # The wrapper names its parameters "m.<module path>"; the stand-ins' real tensors are keyed the same way.
    weights = {i.name: real[i.name.removeprefix("m.")] for i in proto.graph.input if i.name.removeprefix("m.") in real}
    return Traced(proto, weights, "float16" if dtype == torch.float16 else "float32")


def _basic_optimizations(path: Path) -> Path:
    """onnxruntime's level-1 rewrites (constant folding of shape arithmetic, redundant nodes), weights as inputs."""
    import onnxruntime as ort

    optimized = path.with_name("optimized.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return optimized


# --- attaching the weights -----------------------------------------------------------------------------------


def attach(traced: Traced, recipe, data: ExternalData, module_of, nbits_for, block_for, codes_of) -> None:
    """Replace every weight input of ``traced.proto`` by initializers in ``data`` (see the module docstring).
    ``codes_of(module, weight, quant)`` gives a quantized weight's ``Codes``."""
    from onnx import helper

    graph = traced.proto.graph
    for name in list(traced.weights):
        weight = traced.weights.pop(name)  # released once written
        consumers = [n for n in graph.node if name in n.input]
        embeds = [n for n in consumers if n.op_type == "Gather" and (module_of(n) or "").endswith("embed_tokens")]
        # A tied table read both ways: the lm_head's int8 rows may serve the lookup too (``_embedding``).
        packed: list[Packed] | None = [] if embeds and _shareable(recipe) else None
        keep_float = False
        for node in sorted(consumers, key=lambda n: n.op_type != "Transpose"):  # the linear first
            if node.op_type == "Transpose":
                keep_float |= _linear(graph, node, weight, recipe, data, module_of, nbits_for, block_for, codes_of,
                                      traced.dtype, packed)  # fmt: skip
            elif node in embeds:
                keep_float |= _embedding(graph, node, weight, recipe, data, block_for, codes_of, module_of(node),
                                         traced.dtype, packed[0] if packed else None)  # fmt: skip
            else:
                keep_float = True
        graph.input.remove(next(i for i in graph.input if i.name == name))
        if keep_float:
            graph.initializer.append(data.tensor(name, _float(weight, traced.dtype)))
    if not any(o.domain == "com.microsoft" for o in traced.proto.opset_import):
        traced.proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _float(weight, dtype: str) -> np.ndarray:
    import torch

    return weight.to(torch.float16 if dtype == "float16" else torch.float32).numpy()


def _linear(graph, transpose, weight, recipe, data, module_of, nbits_for, block_for, codes_of, dtype,
            packed: list[Packed] | None = None) -> bool:  # fmt: skip
    """Each MatMul reading ``Transpose(weight)``; returns True when the float weight must stay (tied, shared).
    ``packed``: where a tied embedding may read these codes, each MatMulNBits's is appended, its scales 2-D."""
    from onnx import helper

    matmuls = [n for n in graph.node if transpose.output[0] in n.input and n.op_type == "MatMul"]
    shared = False
    for matmul in matmuls:
        module = module_of(matmul) or ""
        quant = recipe.for_module(module)
        setting = nbits_for(quant)
        if setting is None:
            shared = True
            continue
        n, k = weight.shape
        block = block_for(setting, k)
        book_codes = codes_of(module, weight, quant)
        codes, scales, zeros = in_blocks(book_codes, block, unsigned=False)
        prefix = (module or matmul.name).replace("/", ".")
        # [N * blocks], or [N, blocks] (MatMulNBits takes both) where a GatherBlockQuantized shares them
        scales = scales.astype(np.float16 if dtype == "float16" else np.float32)
        inits = [data.tensor(f"{prefix}.weight_Q{setting.bits}", _pack_rows(codes, setting.bits, block)),
                 data.tensor(f"{prefix}.weight_scales", scales if packed is not None else scales.reshape(-1))]  # fmt: skip
        if zeros is not None:
            inits.append(data.tensor(f"{prefix}.weight_zp", _pack_zero_points(zeros, setting.bits)))
        elif packed is not None and setting.bits == 8:
            packed.append(Packed(book_codes, block, k, inits[0].name, inits[1].name))
        graph.initializer.extend(inits)
        attrs = {"K": k, "N": n, "bits": setting.bits, "block_size": block}
        if setting.accuracy_level is not None:
            attrs["accuracy_level"] = setting.accuracy_level
        node = helper.make_node("MatMulNBits", [matmul.input[0]] + [i.name for i in inits], list(matmul.output),
                                name=matmul.name.replace("/MatMul", "/MatMul_Q4" if setting.bits == 4 else "/MatMul_Q8"),
                                domain="com.microsoft", **attrs)  # fmt: skip
        _replace(graph, matmul, node)
    if shared:  # float consumers keep reading the Transpose of the float weight
        if len(matmuls) == 1 and len([n for n in graph.node if transpose.input[0] in n.input]) == 1:
            # the only reader: store the transposed weight itself and drop the Transpose
            t_name = transpose.output[0]
            graph.initializer.append(data.tensor(t_name, np.ascontiguousarray(_float(weight, dtype).T)))
            graph.node.remove(transpose)
            return False
        return True
    graph.node.remove(transpose)
    return False


@dataclass(frozen=True)
class Packed:
    """A MatMulNBits's 8-bit symmetric codes as written: what a tied embedding's lookup can read instead."""

    codes: object  # the code book's Codes
    block: int
    k: int
    data: str  # B: uint8 [N, blocks, block]
    scales: str  # [N, blocks]


def _shareable(recipe) -> bool:
    """Embedding and lm_head quantized alike, 8-bit symmetric per row: their codes of a tied table are the same."""
    e, h = recipe.embedding, recipe.lm_head
    return all(q is not None and not q.is_float and q.format == "linear" for q in (e, h)) and (
        (e.bits, e.group_size, e.symmetric) == (h.bits, h.group_size, h.symmetric) == (8, None, True)
    )


def _embedding(graph, gather, weight, recipe, data, block_for, codes_of, module, dtype,
               shared: Packed | None = None) -> bool:  # fmt: skip
    """GatherBlockQuantized rows per the recipe's embedding setting; True when the float table is needed."""
    from onnx import TensorProto, helper

    quant = recipe.embedding
    if quant is None or quant.is_float:
        return True
    if shared is not None and _same_codes(shared.codes, codes_of(module, weight, quant)):
        _shared_lookup(graph, gather, shared)
        return False
    block = block_for(NBits(quant.bits, quant.group_size, quant.symmetric, None), weight.shape[1], 1 << 16)
    codes, scales, zeros = in_blocks(codes_of(module, weight, quant), block, unsigned=True)
    codes = codes[:, : weight.shape[1]]  # the op takes the table unpadded
    name = gather.input[0]
    qtype = TensorProto.UINT4 if quant.bits == 4 else TensorProto.UINT8
    q_data = data.tensor(f"{name}_Q{quant.bits}", np.frombuffer(_pack(codes, quant.bits), np.uint8), qtype, codes.shape)
    q_zeros = data.tensor(f"{name}_zp", np.frombuffer(_pack(zeros, quant.bits), np.uint8), qtype, zeros.shape)
    q_scales = data.tensor(f"{name}_scales", scales.astype(np.float16 if dtype == "float16" else np.float32))
    graph.initializer.extend([q_data, q_scales, q_zeros])
    node = helper.make_node(
        "GatherBlockQuantized", [q_data.name, gather.input[1], q_scales.name, q_zeros.name], list(gather.output),
        name=gather.name + f"_Q{quant.bits}", domain="com.microsoft", gather_axis=0, quantize_axis=1,
        block_size=block, bits=quant.bits,
    )  # fmt: skip
    _replace(graph, gather, node)
    return False


def _same_codes(a, b) -> bool:
    import torch

    return a.bits == b.bits and a.zero is None and b.zero is None and torch.equal(a.q, b.q) and torch.equal(a.scale, b.scale)


def _shared_lookup(graph, gather, shared: Packed) -> None:
    """The embedding lookup on the lm_head's codes: GatherBlockQuantized over its B seen as rows [N, K] (a
    Reshape, and a Slice where K was padded to whole blocks) with its scales. Both read initializers only, so
    onnxruntime folds them into one constant when the session loads; the file holds the table once (SmolLM2: 28 MB
    less). Symmetric 8-bit: no zero points, the op's default of 128 is MatMulNBits' implicit one."""
    from onnx import helper, numpy_helper

    name = gather.input[0]
    n_blocks_k = f"{name}_rows_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), n_blocks_k))
    nodes = [helper.make_node("Reshape", [shared.data, n_blocks_k], [f"{name}_rows"], name=gather.name + "_rows")]
    rows = f"{name}_rows"
    padded = -(-shared.k // shared.block) * shared.block
    if padded != shared.k:
        for suffix, value in (("starts", 0), ("ends", shared.k), ("axes", 1)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{name}_cut_{suffix}"))
        nodes.append(helper.make_node("Slice", [rows] + [f"{name}_cut_{x}" for x in ("starts", "ends", "axes")],
                                      [f"{name}_rows_cut"], name=gather.name + "_cut"))  # fmt: skip
        rows = f"{name}_rows_cut"
    nodes.append(helper.make_node(
        "GatherBlockQuantized", [rows, gather.input[1], shared.scales], list(gather.output), name=gather.name + "_Q8",
        domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=shared.block, bits=8,
    ))  # fmt: skip
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def _replace(graph, old, new) -> None:
    position = list(graph.node).index(old)
    graph.node.remove(old)
    graph.node.insert(position, new)


# --- codes ---------------------------------------------------------------------------------------------------


def in_blocks(codes, block: int, *, unsigned: bool):
    """``Codes`` in onnxruntime's block layout: uint8 codes [N, K padded to blocks], scales [N, blocks] and zero
    points [N, blocks] (None for symmetric codes unless ``unsigned`` asks for explicit ones: GatherBlockQuantized
    always takes them; MatMulNBits implies 2^(bits-1)). Per-channel codes (one group over K) repeat their scale
    over every block; padding columns hold the zero point, so they dequantize to 0."""
    import torch

    q, scale, zero = codes.q, codes.scale, codes.zero
    n, k = q.shape
    offset = 2 ** (codes.bits - 1)
    if zero is None:
        # signed -> the op's unsigned codes around its implicit zero point: two's complement + offset, in uint8
        # (wrapping), so a 131k-row lm_head never gets a wider temporary
        q = q.view(torch.uint8) + offset
        zero = torch.full(scale.shape, offset, dtype=torch.uint8) if unsigned else None
    if codes.group != block:
        if codes.group != k:
            raise ValueError(f"codes in groups of {codes.group} cannot be stored in blocks of {block}")
        blocks = -(-k // block)
        scale = scale.expand(n, blocks)
        zero = None if zero is None else zero.expand(n, blocks)
    pad = scale.shape[1] * block - k
    if pad > 0:
        fill = zero[:, -1:] if zero is not None else torch.full((n, 1), offset, dtype=torch.uint8)
        q = torch.cat([q, fill.expand(n, pad)], dim=1)
    return q.numpy(), scale.float().contiguous().numpy(), None if zero is None else zero.contiguous().numpy()


def _pack_rows(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """[N, K_padded] codes -> MatMulNBits' B: [N, blocks, block * bits / 8] bytes."""
    n, kp = codes.shape
    if bits == 8:
        return codes.reshape(n, kp // block, block)
    packed = (codes[:, 0::2] & 0xF) | ((codes[:, 1::2] & 0xF) << 4)
    return packed.astype(np.uint8).reshape(n, kp // block, block // 2)


def _pack_zero_points(zeros: np.ndarray, bits: int) -> np.ndarray:
    """[N, blocks] zero points -> uint8, 4-bit ones two a byte along the blocks of a row."""
    if bits == 8:
        return zeros.reshape(-1)
    n, blocks = zeros.shape
    if blocks % 2:
        zeros = np.concatenate([zeros, np.zeros((n, 1), np.uint8)], axis=1)
    return ((zeros[:, 0::2] & 0xF) | ((zeros[:, 1::2] & 0xF) << 4)).astype(np.uint8).reshape(-1)
