"""Translate a saved Core ML ML program (.mlpackage) into an ONNX graph, so that it can run off a Mac.

Core ML predicts only on Apple platforms, but the program itself (MIL) reads back anywhere. Each MIL op maps
to a few ONNX ops with the same semantics; the translation is of the saved program, never of the torch model it
came from, so it checks what ships. States become explicit graph inputs (``<state>``) and outputs
(``<state>_out``): ``read_state`` reads the state's current value, ``coreml_update_state`` replaces it.
``constexpr_*`` decompression ops (quantized and palettized weights) become dequantized initializers, computed
by coremltools' own decompression code.

``float_type`` re-types every float tensor: "float16" approximates the device's fp16 arithmetic for an fp32
program (onnxruntime's CPU kernels round each op's result to fp16), "float32" evaluates an fp16 program without
rounding; None keeps the program's own types. An op the translator does not know is never guessed at: the
translation fails with every untranslated op type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepack.errors import ExportError

OPSET = 21  # Gelu needs 20; blocked int4 DequantizeLinear 21


class UntranslatedOpsError(ExportError):
    """The program uses MIL ops the ONNX translation does not cover."""

    def __init__(self, path, op_types: list[str]):
        self.op_types = sorted(set(op_types))
        super().__init__(
            f"{path}: cannot check this Core ML program off a Mac: no ONNX translation for MIL op type(s) "
            f"{', '.join(self.op_types)}. Check it on macOS (native Core ML runner) or extend "
            "edgepack.backends.coreml.mil2onnx."
        )


@dataclass
class Translation:
    model: object  # onnx.ModelProto
    inputs: dict[str, tuple]  # name -> (shape with None for flexible dims, numpy dtype)
    states: dict[str, tuple]  # name -> (shape, numpy dtype); fed as input <name>, returned as <name>_out
    outputs: list[str] = field(default_factory=list)


def load_program(path: Path):
    """The MIL program of a saved .mlpackage, weights included (works without the Core ML runtime)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    return load(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)


def translate(path: Path, *, float_type: str | None = None, function: str = "main") -> Translation:
    program = load_program(Path(path))
    return translate_program(program, float_type=float_type, function=function, source=str(path))


def translate_program(program, *, float_type=None, function="main", source="program") -> Translation:
    func = program.functions[function]
    # Control flow (ops with nested blocks) is not translated: edgepack's exports emit none.
    unknown = [op.op_type for op in func.operations if op.op_type not in _HANDLERS or op.blocks]
    if unknown:
        raise UntranslatedOpsError(source, unknown)
    return _Builder(func, float_type).build()


class _Builder:
    def __init__(self, func, float_type):
        import onnx

        self.onnx = onnx
        self.func = func
        self.float_type = float_type
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict[int, str] = {}  # id(var) -> ONNX value name
        self.lazy: dict[int, object] = {}  # id(var) -> the constexpr op computing it, emitted on first read
        self.state_value: dict[str, str] = {}  # state name -> ONNX name of its current value
        self.counter = 0

    # -- types ------------------------------------------------------------------------------------------
    def np_dtype(self, mil_dtype) -> np.dtype:
        from coremltools.converters.mil.mil import types

        if types.is_float(mil_dtype) and self.float_type:
            return np.dtype(self.float_type)
        return np.dtype(types.nptype_from_builtin(mil_dtype))

    def onnx_type(self, mil_dtype) -> int:
        return self.onnx.helper.np_dtype_to_tensor_dtype(self.np_dtype(mil_dtype))

    # -- values -----------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"_{hint}_{self.counter}"

    def const(self, value, dtype, hint="c") -> str:
        name = self.fresh(hint)
        array = np.asarray(value).astype(dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def packed(self, values: np.ndarray, kind: str, hint: str) -> str:
        """An integer initializer of ONNX type ``kind`` (INT4/UINT4: two values a byte, low nibble first)."""
        name = self.fresh(hint)
        tensor_type = getattr(self.onnx.TensorProto, kind)
        if kind in ("INT4", "UINT4"):
            flat = (np.asarray(values).astype(np.int16).reshape(-1) & 0x0F).astype(np.uint8)
            if flat.size % 2:
                flat = np.append(flat, np.uint8(0))
            raw = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()
        else:
            raw = np.asarray(values).astype(np.int8 if kind == "INT8" else np.uint8).tobytes()
        self.initializers.append(self.onnx.helper.make_tensor(name, tensor_type, list(values.shape), raw, raw=True))
        return name

    def i64(self, values, hint="i") -> str:
        return self.const(np.asarray(values, dtype=np.int64), np.int64, hint)

    def value(self, var) -> str:
        """The ONNX name holding ``var``; constants become initializers on first use."""
        if id(var) in self.names:
            return self.names[id(var)]
        if id(var) in self.lazy:
            _emit_constexpr(self, self.lazy[id(var)])
            return self.names[id(var)]
        if var.val is None:
            raise ExportError(f"MIL value {var.name} is used before it is defined")
        name = self.const(var.val, self.np_dtype(var.dtype), "w")
        self.names[id(var)] = name
        return name

    def node(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        if isinstance(outputs, int):
            outputs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outputs, **attrs))
        return outputs

    def one(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.node(op_type, inputs, **attrs)[0]

    def bind(self, var, name: str) -> None:
        self.names[id(var)] = name

    # -- graph ------------------------------------------------------------------------------------------
    def build(self) -> Translation:
        helper = self.onnx.helper
        graph_inputs, inputs, states = [], {}, {}
        for name, var in self.func.inputs.items():
            is_state = _is_state(var)
            dims = [d if isinstance(d, int) else str(d) for d in var.shape]
            graph_inputs.append(helper.make_tensor_value_info(name, self.onnx_type(var.dtype), dims))
            entry = (tuple(d if isinstance(d, int) else None for d in var.shape), self.np_dtype(var.dtype))
            if is_state:
                states[name] = entry
                self.state_value[name] = name
            else:
                inputs[name] = entry
                self.names[id(var)] = name
        for op in self.func.operations:
            _HANDLERS[op.op_type](self, op)
        graph_outputs, output_names = [], []
        for var in self.func.outputs:
            self.node("Identity", [self.value(var)], [var.name])
            graph_outputs.append(helper.make_tensor_value_info(var.name, self.onnx_type(var.dtype), None))
            output_names.append(var.name)
        for name, (shape, dtype) in states.items():
            self.node("Identity", [self.state_value[name]], [f"{name}_out"])
            elem = helper.np_dtype_to_tensor_dtype(dtype)
            graph_outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, list(shape)))
        graph = helper.make_graph(self.nodes, "coreml", graph_inputs, graph_outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
        return Translation(model, inputs, states, output_names)


def _int_kinds() -> dict:
    from coremltools.converters.mil.mil import types

    return {types.int4: "INT4", types.uint4: "UINT4", types.int8: "INT8", types.uint8: "UINT8"}


def _is_state(var) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_state(var.sym_type)


# -- op handlers: one function per MIL op type ------------------------------------------------------------
_HANDLERS: dict = {}


def handles(*op_types):
    def register(fn):
        for t in op_types:
            _HANDLERS[t] = fn
        return fn

    return register


def _arg(op, name, default=None):
    var = op.inputs.get(name)
    if var is None:
        return default
    return var.val


def _out(b: _Builder, op, name: str) -> None:
    b.bind(op.outputs[0], name)


@handles("const")
def _const(b, op):
    pass  # materialised lazily by _Builder.value, only where a tensor is needed


@handles(
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_dense",
    "constexpr_sparse_to_dense",
    "constexpr_affine_dequantize",
    "constexpr_cast",
    "constexpr_lut_to_sparse",
    "constexpr_sparse_blockwise_shift_scale",
)
def _constexpr(b, op):
    # Emitted where first read: a linear layer may take the codes into MatMulNBits and never need them.
    for var in op.outputs:
        b.lazy[id(var)] = op


def _emit_constexpr(b, op) -> None:
    if op.op_type == "constexpr_blockwise_shift_scale" and _dequantize_blocks(b, op):
        return
    values = op.materialized_val_inference()
    values = values if isinstance(values, tuple) else (values,)
    for var, val in zip(op.outputs, values):
        b.bind(var, b.const(val, b.np_dtype(var.dtype), "dq"))


def _dequantize_blocks(b, op) -> bool:
    """Codes read by something other than a linear layer (the embedding's lookup; linear layers take theirs
    into MatMulNBits) stay integers: a DequantizeLinear over blocks of the last axis ((data - offset) * scale, as
    constexpr_blockwise_shift_scale computes), the data packed as ONNX int4/uint4/int8. False (materialise
    instead) for layouts DequantizeLinear cannot express: blocks along another axis, a float offset."""
    data, scale = op.data.val, op.scale.val
    offset = op.offset.val if op.offset is not None else None
    kind = _int_kinds().get(op.data.dtype)
    if (kind is None or data is None or scale is None or data.ndim != 2 or scale.ndim != 2
            or scale.shape[0] != data.shape[0] or data.shape[1] % scale.shape[1]
            or (offset is not None and (offset.shape != scale.shape or op.offset.dtype != op.data.dtype))):  # fmt: skip
        return False
    block = data.shape[1] // scale.shape[1]
    out_dtype = b.np_dtype(op.outputs[0].dtype)
    inputs = [b.packed(data, kind, "q"), b.const(scale, out_dtype, "s")]
    if offset is not None:
        inputs.append(b.packed(offset, kind, "z"))
    attrs = {"axis": 1, "block_size": block} if block > 1 else {"axis": 1}
    b.bind(op.outputs[0], b.one("DequantizeLinear", inputs, **attrs))
    return True


@handles("read_state")
def _read_state(b, op):
    _out(b, op, b.state_value[op.inputs["input"].name])


@handles("coreml_update_state", "write_state")
def _update_state(b, op):
    state = op.inputs["state"] if "state" in op.inputs else op.inputs["input"]
    value = b.value(op.inputs["value"] if "value" in op.inputs else op.inputs["data"])
    b.state_value[state.name] = value
    if op.outputs:
        _out(b, op, value)


_BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "real_div": "Div",
    "pow": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "equal": "Equal",
    "less": "Less",
    "less_equal": "LessOrEqual",
    "greater": "Greater",
    "greater_equal": "GreaterOrEqual",
    "logical_and": "And",
    "logical_or": "Or",
    "logical_xor": "Xor",
    "mod": "Mod",
}


@handles(*_BINARY)
def _binary(b, op):
    _out(b, op, b.one(_BINARY[op.op_type], [b.value(op.x), b.value(op.y)]))


@handles("not_equal")
def _not_equal(b, op):
    _out(b, op, b.one("Not", [b.one("Equal", [b.value(op.x), b.value(op.y)])]))


@handles("floor_div")
def _floor_div(b, op):
    if np.issubdtype(b.np_dtype(op.x.dtype), np.integer):  # ONNX Div truncates; MIL floors
        x, y = (b.one("Cast", [b.value(v)], to=1) for v in (op.x, op.y))
        floored = b.one("Floor", [b.one("Div", [x, y])])
        _out(b, op, b.one("Cast", [floored], to=b.onnx_type(op.outputs[0].dtype)))
    else:
        _out(b, op, b.one("Floor", [b.one("Div", [b.value(op.x), b.value(op.y)])]))


_UNARY = {
    "sin": "Sin",
    "cos": "Cos",
    "tanh": "Tanh",
    "exp": "Exp",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "sigmoid": "Sigmoid",
    "relu": "Relu",
    "erf": "Erf",
    "floor": "Floor",
    "ceil": "Ceil",
    "sign": "Sign",
    "logical_not": "Not",
    "identity": "Identity",
    "round": "Round",
}


@handles(*_UNARY)
def _unary(b, op):
    _out(b, op, b.one(_UNARY[op.op_type], [b.value(op.x)]))


def _plus_epsilon(b, op) -> str:
    eps = b.const(
        _arg(op, "epsilon", 1e-12 if op.op_type == "rsqrt" else 1e-45), b.np_dtype(op.x.dtype), "eps"
    )
    return b.one("Add", [b.value(op.x), eps])


@handles("rsqrt")
def _rsqrt(b, op):
    _out(b, op, b.one("Reciprocal", [b.one("Sqrt", [_plus_epsilon(b, op)])]))


@handles("inverse")
def _inverse(b, op):
    _out(b, op, b.one("Reciprocal", [_plus_epsilon(b, op)]))


@handles("log")
def _log(b, op):
    _out(b, op, b.one("Log", [_plus_epsilon(b, op)]))


@handles("square")
def _square(b, op):
    x = b.value(op.x)
    _out(b, op, b.one("Mul", [x, x]))


@handles("silu")
def _silu(b, op):
    x = b.value(op.x)
    _out(b, op, b.one("Mul", [x, b.one("Sigmoid", [x])]))


@handles("gelu")
def _gelu(b, op):
    mode = _arg(op, "mode", "EXACT")
    x = b.value(op.x)
    if mode == "SIGMOID_APPROXIMATION":
        k = b.const(1.702, b.np_dtype(op.x.dtype))
        _out(b, op, b.one("Mul", [x, b.one("Sigmoid", [b.one("Mul", [x, k])])]))
        return
    approx = "tanh" if mode == "TANH_APPROXIMATION" else "none"
    _out(b, op, b.one("Gelu", [x], approximate=approx))


@handles("clip")
def _clip(b, op):
    dtype = b.np_dtype(op.x.dtype)
    lo, hi = (b.const(_arg(op, k), dtype) for k in ("alpha", "beta"))
    _out(b, op, b.one("Clip", [b.value(op.x), lo, hi]))


@handles("cast")
def _cast(b, op):
    _out(b, op, b.one("Cast", [b.value(op.x)], to=b.onnx_type(op.outputs[0].dtype)))


@handles("select")
def _select(b, op):
    _out(b, op, b.one("Where", [b.value(op.cond), b.value(op.a), b.value(op.b)]))


@handles("linear")
def _linear(b, op):
    weight = op.weight
    if id(weight) in b.lazy and _matmul_nbits(b, op, b.lazy[id(weight)]):
        return
    if weight.val is not None and id(weight) not in b.names:  # pre-transpose constant weights
        w_t = b.const(np.asarray(weight.val).T, b.np_dtype(weight.dtype), "wT")
    else:
        w_t = b.one("Transpose", [b.value(weight)], perm=[1, 0])
    y = b.one("MatMul", [b.value(op.x), w_t])
    bias = op.inputs.get("bias")
    if bias is not None and not (bias.val is not None and not np.any(bias.val)):
        y = b.one("Add", [y, b.value(bias)])
    _out(b, op, y)


def _matmul_nbits(b, op, source) -> bool:
    """``linear`` of int4/int8 block codes as onnxruntime's MatMulNBits, which dequantizes inside its kernel: a
    DequantizeLinear has no input from the activations, so onnxruntime runs every one of them first and holds
    the whole model in float (a 4B program passed 14 GB). False where MatMulNBits cannot hold the layout."""
    import torch

    from edgepack.codes.core import Codes
    from edgepack.backends.onnx.weights import _pack_rows, _pack_zero_points, in_blocks

    if source.op_type != "constexpr_blockwise_shift_scale" or len(source.outputs) != 1:
        return False
    kind = _int_kinds().get(source.data.dtype)
    data, scale = source.data.val, source.scale.val
    offset = source.offset.val if source.offset is not None else None
    if kind is None or data is None or data.ndim != 2 or scale is None or scale.shape[0] != data.shape[0]:
        return False
    n, k = data.shape
    group = k // scale.shape[1] if k % scale.shape[1] == 0 else 0
    bits = 4 if kind in ("INT4", "UINT4") else 8
    block = group if group in (16, 32, 64, 128, 256) else 0
    if not block or (offset is not None and offset.shape != scale.shape) or (kind == "INT8" and offset is not None):
        return False
    unsigned = kind.startswith("U")
    q = torch.from_numpy(np.ascontiguousarray(data).astype(np.uint8 if unsigned else np.int8))
    zero = None if offset is None else torch.from_numpy(np.asarray(offset).astype(np.uint8))
    if unsigned and zero is None:  # unsigned codes without an offset: zero point 0
        zero = torch.zeros(scale.shape, dtype=torch.uint8)
    if not unsigned and zero is not None:
        return False
    codes = Codes(q, torch.from_numpy(np.asarray(scale, dtype=np.float32)), zero, bits, block)
    packed, scales, zeros = in_blocks(codes, block, unsigned=False)
    float_type = b.np_dtype(op.outputs[0].dtype)
    inputs = [b.value(op.x), b.const(_pack_rows(packed, bits, block), np.uint8, "qB"),
              b.const(scales.reshape(-1), float_type, "qS")]  # fmt: skip
    if zeros is not None:
        inputs.append(b.const(_pack_zero_points(zeros, bits), np.uint8, "qZ"))
    y = b.node("MatMulNBits", inputs, 1, domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)[0]
    bias = op.inputs.get("bias")
    if bias is not None and not (bias.val is not None and not np.any(bias.val)):
        y = b.one("Add", [y, b.value(bias)])
    _out(b, op, y)
    return True


@handles("matmul")
def _matmul(b, op):
    def operand(var, transpose):
        name = b.value(var)
        if not transpose:
            return name
        rank = len(var.shape)
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return b.one("Transpose", [name], perm=perm)

    x = operand(op.x, _arg(op, "transpose_x", False))
    y = operand(op.y, _arg(op, "transpose_y", False))
    _out(b, op, b.one("MatMul", [x, y]))


@handles("softmax")
def _softmax(b, op):
    _out(b, op, b.one("Softmax", [b.value(op.x)], axis=int(_arg(op, "axis", -1))))


_REDUCE = {
    "reduce_mean": "ReduceMean",
    "reduce_sum": "ReduceSum",
    "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin",
    "reduce_prod": "ReduceProd",
}


@handles(*_REDUCE)
def _reduce(b, op):
    axes = _arg(op, "axes")
    keep = int(bool(_arg(op, "keep_dims", False)))
    inputs = [b.value(op.x)] + ([b.i64(axes)] if axes is not None else [])
    _out(b, op, b.one(_REDUCE[op.op_type], inputs, keepdims=keep))


@handles("reshape")
def _reshape(b, op):
    shape = op.inputs["shape"]
    if shape.val is not None:
        target = np.asarray(shape.val, dtype=np.int64)
        if 0 in target and len(target) != len(op.x.shape):
            raise UntranslatedOpsError("program", ["reshape (0 in shape of a different rank)"])
        shape_name = b.i64(target)
    else:
        shape_name = b.one("Cast", [b.value(shape)], to=7)
    _out(b, op, b.one("Reshape", [b.value(op.x), shape_name]))


@handles("transpose")
def _transpose(b, op):
    _out(b, op, b.one("Transpose", [b.value(op.x)], perm=[int(p) for p in _arg(op, "perm")]))


@handles("expand_dims")
def _expand_dims(b, op):
    _out(b, op, b.one("Unsqueeze", [b.value(op.x), b.i64(_arg(op, "axes"))]))


@handles("squeeze")
def _squeeze(b, op):
    axes = _arg(op, "axes")
    inputs = [b.value(op.x)] + ([b.i64(axes)] if axes is not None else [])
    _out(b, op, b.one("Squeeze", inputs))


@handles("shape")
def _shape(b, op):
    _out(b, op, b.one("Cast", [b.one("Shape", [b.value(op.x)])], to=b.onnx_type(op.outputs[0].dtype)))


@handles("concat")
def _concat(b, op):
    if _arg(op, "interleave", False):
        raise UntranslatedOpsError("program", ["concat (interleave)"])
    parts = []
    for var in op.values:
        name = b.value(var)
        parts.append(b.one("Unsqueeze", [name, b.i64([0])]) if len(var.shape) == 0 else name)
    _out(b, op, b.one("Concat", parts, axis=int(_arg(op, "axis"))))


@handles("split")
def _split(b, op):
    axis = int(_arg(op, "axis"))
    sizes = _arg(op, "split_sizes")
    inputs = [b.value(op.x)] + ([b.i64(sizes)] if sizes is not None else [])
    attrs = {} if sizes is not None else {"num_outputs": int(_arg(op, "num_splits"))}
    names = b.node("Split", inputs, len(op.outputs), axis=axis, **attrs)
    for var, name in zip(op.outputs, names):
        b.bind(var, name)


@handles("tile")
def _tile(b, op):
    reps = op.inputs["reps"]
    reps_name = b.i64(reps.val) if reps.val is not None else b.one("Cast", [b.value(reps)], to=7)
    _out(b, op, b.one("Tile", [b.value(op.x), reps_name]))


@handles("gather")
def _gather(b, op):
    if int(_arg(op, "batch_dims", 0)):
        raise UntranslatedOpsError("program", ["gather (batch_dims)"])
    indices = b.value(op.indices)
    if b.np_dtype(op.indices.dtype) not in (np.int32, np.int64):  # fp16 programs store small ids as uint16
        indices = b.one("Cast", [indices], to=7)
    _out(b, op, b.one("Gather", [b.value(op.x), indices], axis=int(_arg(op, "axis", 0))))


@handles("range_1d")
def _range(b, op):
    scalars = []
    for key in ("start", "end", "step"):
        var = op.inputs[key]
        name = b.value(var)
        scalars.append(b.one("Reshape", [name, b.i64([])]) if len(var.shape) else name)
    _out(b, op, b.one("Range", scalars))


@handles("fill")
def _fill(b, op):
    shape = op.inputs["shape"]
    shape_name = b.i64(shape.val) if shape.val is not None else b.one("Cast", [b.value(shape)], to=7)
    value = np.asarray(_arg(op, "value", 0.0)).reshape(1).astype(b.np_dtype(op.outputs[0].dtype))
    tensor = b.onnx.numpy_helper.from_array(value)
    _out(b, op, b.one("ConstantOfShape", [shape_name], value=tensor))


# -- slicing ------------------------------------------------------------------------------------------
_INT64_MAX = np.iinfo(np.int64).max


def _slice_bounds(b, op, key, mask_key, default):
    """begin or end as an int64 vector, with masked entries replaced by ``default`` (a per-axis list)."""
    var, rank = op.inputs[key], len(op.x.shape)
    mask = _arg(op, mask_key)
    mask = np.zeros(rank, bool) if mask is None else np.asarray(mask, bool)
    if var.val is not None:
        return b.i64(np.where(mask, default, np.asarray(var.val, np.int64)))
    name = b.one("Cast", [b.value(var)], to=7)
    if mask.any():
        name = b.one("Where", [b.const(mask, bool), b.i64(default), name])
    return name


@handles("slice_by_index")
def _slice_by_index(b, op):
    rank = len(op.x.shape)
    stride = (
        np.asarray(_arg(op, "stride", np.ones(rank)), np.int64)
        if _arg(op, "stride") is not None
        else np.ones(rank, np.int64)
    )
    neg = stride < 0
    begin = _slice_bounds(b, op, "begin", "begin_mask", np.where(neg, -1, 0))
    squeeze = _arg(op, "squeeze_mask")
    squeeze = np.zeros(rank, bool) if squeeze is None else np.asarray(squeeze, bool)
    end_default = np.where(neg, np.iinfo(np.int64).min, _INT64_MAX)
    if squeeze.any():  # a pure index: end = begin + 1
        end = b.one("Add", [begin, b.i64(np.where(squeeze, 1, 0))])
        end = b.one(
            "Where", [b.const(squeeze, bool), end, _slice_bounds(b, op, "end", "end_mask", end_default)]
        )
    else:
        end = _slice_bounds(b, op, "end", "end_mask", end_default)
    y = b.one("Slice", [b.value(op.x), begin, end, b.i64(np.arange(rank)), b.i64(stride)])
    if squeeze.any():
        y = b.one("Squeeze", [y, b.i64(np.flatnonzero(squeeze))])
    _out(b, op, y)


@handles("slice_update")
def _slice_update(b, op):
    """x[begin:end:stride] = update, as ScatterND over the index grid of the updated region."""
    rank = len(op.x.shape)
    stride = _arg(op, "stride")
    stride = np.ones(rank, np.int64) if stride is None else np.asarray(stride, np.int64)
    x = b.value(op.x)
    begin = _slice_bounds(b, op, "begin", "begin_mask", np.zeros(rank, np.int64))
    shape_x = b.one("Shape", [x])
    begin = b.one(
        "Where", [b.one("Less", [begin, b.i64(np.zeros(rank))]), b.one("Add", [begin, shape_x]), begin]
    )
    update = b.value(op.update)
    squeeze = _arg(op, "squeeze_mask")
    if squeeze is not None and np.any(squeeze):
        update = b.one("Unsqueeze", [update, b.i64(np.flatnonzero(squeeze))])
    shape_u = b.one("Shape", [update])
    columns = []
    for axis in range(rank):
        start = b.one("Gather", [begin, b.i64(axis)], axis=0)
        count = b.one("Gather", [shape_u, b.i64(axis)], axis=0)
        step = b.i64(stride[axis])
        limit = b.one("Add", [start, b.one("Mul", [count, step])])
        rng = b.one("Range", [start, limit, step])
        view = [1] * rank
        view[axis] = -1
        grid = b.one("Expand", [b.one("Reshape", [rng, b.i64(view)]), shape_u])
        columns.append(b.one("Unsqueeze", [grid, b.i64([-1])]))
    indices = b.one("Concat", columns, axis=-1)
    _out(b, op, b.one("ScatterND", [x, indices, update]))


def supported_ops() -> list[str]:
    return sorted(_HANDLERS)
