"""Core ML target: an ML program ``.mlpackage`` for iOS 18 / macOS 15 with a stateful KV cache.

Stages: wrap the model around a Core ML-friendly cache (``coreml_model.StatefulCausalLM``) -> trace ->
``ct.convert`` (flexible query length, fp16 states) -> compress per recipe (``ct.optimize.coreml``) ->
metadata -> save ``model.mlpackage``.

Compute precision: fp16 (what the Neural Engine runs), except for a recipe that keeps every weight fp32, which
converts at fp32 so that parity against eager is exact. Recipe rules map onto the weights by module name
(the const names in the program are the checkpoint's parameter names with dots as underscores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from functools import partial

from edgepack.errors import ExportError
from edgepack.backends import Artifact, ExportRequest, find_codes
from edgepack.backends.coreml import BACKEND

PACKAGE = "model.mlpackage"
MIN_RUNTIME = "iOS 18 / macOS 15"
INPUTS = ("inputIds", "causalMask")
STATES = ("keyCache", "valueCache")


class CoreMLExporter:
    backend = BACKEND

    def __init__(self, compute_precision: str | None = None):
        """``compute_precision``: "float16" or "float32"; None decides from the recipe (see module docstring)."""
        if compute_precision not in (None, "float16", "float32"):
            raise ExportError(f"compute_precision must be float16 or float32, got {compute_precision!r}")
        self.compute_precision = compute_precision

    def precision_for(self, recipe) -> str:
        if self.compute_precision:
            return self.compute_precision
        settings = [q for _, q in recipe.settings()]
        all_fp32 = recipe.dtype == "float32" and all(q.is_float and q.bits == 32 for q in settings)
        return "float32" if all_fp32 else "float16"

    def unhonoured(self, recipe) -> list[str]:
        """Recipe settings Core ML cannot honour, one line each with what is done instead."""
        compute = self.precision_for(recipe)
        lines = []
        if recipe.dtype == "float32" and compute == "float16":
            lines.append(
                "dtype float32: Core ML computes this export in fp16 (the Neural Engine has no fp32)"
            )
        for where, quant in recipe.settings():
            if quant.activations == "int8_dynamic":
                lines.append(
                    f"{where}: int8 dynamic activations: Core ML compresses weights only; "
                    f"activations stay {compute_name(compute)}"
                )
            if quant.is_float and quant.bits == 32 and compute == "float16":
                lines.append(
                    f"{where}: fp32 weights are stored fp16 (Core ML keeps float weights at compute precision)"
                )
        return lines

    def interface(self, artifact: Artifact) -> dict | None:
        d = artifact.details
        if "states" not in d:
            return None  # an artifact.json from before the states were recorded
        dtype = "float16" if d.get("compute_precision", "float16") == "float16" else "float32"
        return {
            "inputs": [{"name": INPUTS[0], "dtype": "int32", "shape": [1, "query_length"]},
                       {"name": INPUTS[1], "dtype": dtype, "shape": [1, 1, "query_length", "end_step"]}],
            "outputs": [{"name": "logits", "dtype": dtype, "shape": [1, "query_length", "vocab_size"]}],
            "states": [{"name": n, "dtype": "float16", "shape": shape} for n, shape in d.get("states", {}).items()],
            "tokenizer": "tokenizer/tokenizer.json",
        }  # fmt: skip

    def export(self, model, request: ExportRequest) -> Artifact:
        import torch

        from edgepack.weights import swap_for_stand_ins

        start = time.perf_counter()
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        recipe, compute = request.recipe, self.precision_for(request.recipe)
        request.progress(
            f"coreml: converting ({compute_name(compute)} compute, {request.max_seq_len} tokens)"
        )
        names = module_names(model)
        # The program is converted around one-element stand-ins; each real weight joins it when it is compressed.
        real = swap_for_stand_ins(model, torch.float32, matrices_only=True)  # coremltools folds vectors (1 + w)
        mlmodel, layout = convert(model, request.max_seq_len, compute)
        request.progress(f"coreml: writing the weights per recipe {recipe.name}, one tensor at a time")
        mlmodel = compress(mlmodel, recipe, names, real, request.codes_of)
        add_metadata(mlmodel, request, compute, layout)
        package = out / PACKAGE
        mlmodel.save(str(package))
        make_reproducible(package)
        files = sorted(p.relative_to(out).as_posix() for p in package.rglob("*") if p.is_file())
        return request.artifact(
            self.backend,
            PACKAGE,
            files,
            min_runtime=MIN_RUNTIME,
            export_seconds=round(time.perf_counter() - start, 2),
            unhonoured=self.unhonoured(recipe),
            details={"compute_precision": compute, **layout},
        )


def make_reproducible(package: Path) -> None:
    """The same export, byte for byte: coremltools writes the metadata map in hash order and names the package's
    items with random UUIDs. The spec is re-serialised deterministically (sorted map keys) and each item named by
    a UUID derived from its path."""
    import uuid

    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgepack:{item['path']}"))
               for old, item in manifest["itemInfoEntries"].items()}  # fmt: skip
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in sorted(manifest["itemInfoEntries"].items(),
                                                                    key=lambda kv: kv[1]["path"])}  # fmt: skip
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4) + "\n")
    root_item = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    spec_path = package / "Data" / root_item["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def compute_name(compute: str) -> str:
    return "fp16" if compute == "float16" else "fp32"


# --- conversion -------------------------------------------------------------------------------------------


def convert(model, max_seq_len: int, compute: str):
    """The ML program (uncompressed) and the facts a runner needs about its inputs and states."""
    import coremltools as ct
    import numpy as np
    import torch

    from edgepack.backends.coreml.model import StatefulCausalLM

    patch_coremltools()
    model.float().eval()  # in place, parameter by parameter: no second copy of the model
    wrapper = StatefulCausalLM(model, max_seq_len, precise_cache=compute == "float32").eval()
    example = (torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 3))
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    q = ct.RangeDim(1, max_seq_len, default=1, symbol="query_length")
    end = ct.RangeDim(1, max_seq_len, default=1, symbol="end_step")
    mask_dtype = np.float16 if compute == "float16" else np.float32
    state_shape = tuple(wrapper.keyCache.shape)
    try:
        mlmodel = ct.convert(
            traced,
            inputs=[
                ct.TensorType(INPUTS[0], shape=(1, q), dtype=np.int32),
                ct.TensorType(INPUTS[1], shape=(1, 1, q, end), dtype=mask_dtype),
            ],
            outputs=[ct.TensorType("logits", dtype=mask_dtype)],
            states=[
                ct.StateType(wrapped_type=ct.TensorType(shape=state_shape, dtype=np.float16), name=n)
                for n in STATES
            ],
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16 if compute == "float16" else ct.precision.FLOAT32,
            convert_to="mlprogram",
            skip_model_load=True,
        )
    except Exception as exc:
        raise ExportError(f"Core ML conversion failed: {type(exc).__name__}: {exc}") from exc
    finally:
        del traced
    layout = {
        "inputs": list(INPUTS),
        "outputs": ["logits"],
        "states": {n: list(state_shape) for n in STATES},
        "cache_layout": "fp16 hi+lo pairs" if wrapper.precise_cache else "fp16",
        "head_dim": wrapper.head_dim,
        "sliding_windows": sorted({w for w in wrapper.windows if w}),
    }
    return mlmodel, layout


_PATCHED = False


def patch_coremltools() -> None:
    """coremltools 9.0 converts aten::Int of a one-element array with int(np.array([n])), which numpy >= 2.4
    rejects; convert such constants through ``.item()`` and leave every other case to coremltools. Also
    silence its per-op progress bars and warnings (edgepack reports progress itself)."""
    global _PATCHED
    if _PATCHED:
        return
    import functools
    import logging

    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil.passes import pass_pipeline
    from coremltools.optimize.coreml import _post_training_quantization, _quantization_passes
    from tqdm import tqdm

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    quiet = functools.partial(tqdm, disable=True)
    ops._tqdm = quiet
    for module in (pass_pipeline, _post_training_quantization, _quantization_passes):
        module.tqdm = quiet

    original = ops._cast

    def _cast(context, node, dtype, dtype_name):
        x = context[node.inputs[0]]
        if x.can_be_folded_to_const() and isinstance(x.val, np.ndarray) and x.val.size == 1:
            context.add(mb.const(val=dtype(x.val.item()), name=node.name), node.name)
            return
        original(context, node, dtype, dtype_name)

    ops._cast = _cast
    _cast_stand_ins_as_views()
    _check_stand_ins_on_their_value()
    _PATCHED = True


def _cast_stand_ins_as_views() -> None:
    """The fp16 pass casts every weight const; numpy's astype turns a one-element stride-0 stand-in into a full
    array, so the program held an fp16 copy of every weight at once (6.8 GB for a 3.4 B model, the Core ML
    export's peak at 4B). A broadcast const casts to a broadcast of its one value cast."""
    import numpy as np
    from coremltools.converters.mil.mil.ops.defs.iOS15.elementwise_unary import cast
    from coremltools.converters.mil.mil.types.type_mapping import string_to_nptype

    original = cast.get_cast_value.__func__

    def get_cast_value(cls, input_var, dtype_val):
        val = input_var.val
        if isinstance(val, np.ndarray) and val.size > 1 and not any(val.strides) and dtype_val in cls.supported_dtypes():
            return np.broadcast_to(np.asarray(val.flat[0]).astype(string_to_nptype(dtype_val)), val.shape)
        return original(cls, input_var, dtype_val)

    cast.get_cast_value = classmethod(get_cast_value)


def _check_stand_ins_on_their_value() -> None:
    """Before casting an op to fp16, coremltools checks that its fp32 consts fit fp16 with ``np.where`` over the
    whole value: for the embedding's broadcast stand-in (131072 x 3072) that built 9.7 GB of int64 indices, the
    Core ML export's peak at 4B (13.3 GB). The same check, on a broadcast's one value and with a boolean mask."""
    import numpy as np
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    def fp16_overflow(op) -> bool:
        for inputs in op.inputs.values():
            for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
                if var.op is None or var.op.op_type != "const" or not var.is_tensor_or_scalar_of(dtype="fp32"):
                    continue
                value = np.asarray(var.op.val.val)
                if value.size > 1 and not any(value.strides):
                    value = value.flat[:1]
                value = np.abs(value)
                # finite values must fit fp16; infinities (|x| >= 1e38, e.g. a mask's -inf) stay infinite
                if np.max(value[value < 1e38], initial=0.0) > 65504:
                    return True
        return False

    FP16ComputePrecision.fp16_overflow = staticmethod(fp16_overflow)


# --- compression -------------------------------------------------------------------------------------------


def module_names(model) -> dict[str, str]:
    """Program const name -> module name, for every linear and embedding weight of the model."""
    from torch import nn

    names = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            names[f"{name}.weight".replace(".", "_")] = name
    return names


def compress(mlmodel, recipe, names: dict[str, str], real: dict | None = None, codes_of=None):
    """Apply the recipe's weight formats to each weight by module name: linear quantization packs the code
    book's codes (``codes_of(module, weight, quant)``, default round-to-nearest) as
    ``constexpr_blockwise_shift_scale``; palettization is coremltools' own k-means.

    ``real`` (parameter name -> tensor): the program was converted around stand-ins; each const takes its real
    value just before it is compressed (``_CodesQuantizer``), so float values of the whole model never sit in
    the program at once. Consts the recipe keeps float take theirs afterwards."""
    import coremltools.optimize.coreml as cto

    codes_of = codes_of or partial(find_codes, None)
    linear, palette, modules = {}, {}, {}
    for op in mlmodel._mil_program.functions["main"].operations:
        # fp16 conversion renames each weight const <param>_to_fp16
        module = names.get(op.name.removesuffix("_to_fp16")) if op.op_type == "const" else None
        quant = recipe.for_module(module) if module else None
        if quant is not None and not quant.is_float:
            (palette if quant.format == "palette" else linear)[op.name] = op_config(quant)
            modules[op.name] = (module, quant)
    # On the in-memory program: coremltools' own helper would load a second copy of it from the package.
    values = _real_values(mlmodel, real) if real is not None else {}
    prog = mlmodel._mil_program
    for function in prog.functions.values():
        function._essential_scope_sources = []  # new ops carry no torch scope (as in a program read back)
    if linear:
        config = cto.OptimizationConfig(op_name_configs=linear)
        _CodesQuantizer(config, values, {k: modules[k] for k in linear}, codes_of).apply(prog)
    _RealWeights(values).apply(prog)
    mlmodel = _rebuilt(prog, mlmodel)
    if palette:
        mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(op_name_configs=palette))
    return mlmodel


def _real_values(mlmodel, real: dict) -> dict:
    """Program const name -> a function giving its real value (numpy, the const's dtype), for every const that
    stands in for a parameter (``real`` is emptied: the functions hold the only references); a parameter no const stands for means the program folded it into something else,
    which this mapping cannot follow: an error, never a silently wrong weight."""
    consts = {op.name.removesuffix("_to_fp16"): op for op in mlmodel._mil_program.functions["main"].operations
              if op.op_type == "const"}  # fmt: skip
    values, missing = {}, []
    while real:  # popped: each weight's last reference is its closure, released once the const is written
        param, tensor = real.popitem()
        op = consts.get(param.replace(".", "_"))
        if op is None:
            missing.append(param)
            continue
        dtype = op.outputs[0].val.dtype
        values[op.name] = lambda t=tensor, d=dtype: t.float().numpy().astype(d)
    if missing:
        raise ExportError(
            f"Core ML conversion folded weights into other constants ({', '.join(missing[:3])}); edgepack cannot "
            "attach them. Report the architecture; exporting to other targets is unaffected."
        )
    return values


def _rebuilt(prog, mlmodel):
    """The MLModel of ``prog`` after its weights changed (what coremltools' _apply_graph_pass does last)."""
    from coremltools.converters.mil.converter import mil_convert

    spec = mlmodel.get_spec()
    return mil_convert(
        prog, convert_to="mlprogram", convert_from="milinternal", specification_version=spec.specificationVersion,
        compute_units=mlmodel.compute_unit, model_description=spec.description, skip_model_load=True,
    )  # fmt: skip


def _replace_const(op, value):
    """A new const holding ``value`` in place of ``op`` (inside a pass's block context); returns its op."""
    from coremltools.converters.mil import Builder as mb

    name = op.name  # the replacement keeps the name: recipes and readers find weights by it
    op.name = op.outputs[0].name = name + "_stand_in"
    new = mb.const(val=value, before_op=op, name=name)
    op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new)
    op.enclosing_block.remove_ops([op])
    return new.op


class _RealWeights:
    """A graph pass giving every remaining stand-in const its real value."""

    def __init__(self, values: dict):
        self.values = values

    def apply(self, prog):
        from coremltools.converters.mil.mil.passes.helper import block_context_manager

        @block_context_manager
        def apply_block(block):
            for op in list(block.operations):
                if op.op_type == "const" and op.name in self.values:
                    _replace_const(op, self.values.pop(op.name)())

        for function in prog.functions.values():
            apply_block(function)


def _CodesQuantizer(config, values: dict, modules: dict, codes_of):
    """coremltools' linear_quantize_weights pass, writing the code book's codes: each const first takes its real
    value (when it was a stand-in), then its codes replace what coremltools would have computed, so the
    ``constexpr_blockwise_shift_scale`` it builds holds exactly edgepack's codes, scales and zero points."""
    import numpy as np
    import torch
    from coremltools.converters.mil.mil import types
    from coremltools.optimize._utils import QuantParams
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights

    class Quantizer(linear_quantize_weights):
        pending = None

        def transform_op(self, op):
            if op.name not in modules:  # not a weight the recipe quantizes: the base pass leaves it as it is
                return super().transform_op(op)
            value = values.pop(op.name, None)
            module, quant = modules[op.name]
            if value is not None:
                op_config = self.config._get_const_op_config(op)
                op = _replace_const(op, value())
                self.config.set_op_name(op.name, op_config)
            weight = torch.from_numpy(np.asarray(op.outputs[0].val, dtype=np.float32))
            self.pending = codes_of(module, weight, quant)
            try:
                super().transform_op(op)
            finally:
                self.pending = None

        def blockwise_compress_by_dtype(self, original_data, dtype, mode, block_sizes):
            codes = self.pending
            if codes is None or tuple(codes.q.shape) != original_data.shape:
                raise ExportError(f"edgepack's codes do not fit a Core ML weight of shape {original_data.shape}")
            # coremltools marks sub-byte dtypes in the numpy dtype's metadata (int8 storage, "true" int4)
            np_type = types.nptype_from_builtin(types.get_nbits_int_builtin_type(codes.bits, codes.symmetric))
            data = codes.q.numpy().astype(np_type)
            scale = codes.scale.numpy().astype(original_data.dtype)
            offset = None if codes.zero is None else codes.zero.numpy().astype(np_type)
            return QuantParams(data=data, scale=scale, offset=offset, nbits=np.uint8(codes.bits))

    return Quantizer(config=config)


def op_config(quant):
    import coremltools.optimize.coreml as cto

    if quant.format == "palette":
        if quant.group_size:
            return cto.OpPalettizerConfig(
                nbits=quant.bits,
                mode="kmeans",
                granularity="per_grouped_channel",
                group_size=quant.group_size,
                weight_threshold=0,
            )
        return cto.OpPalettizerConfig(
            nbits=quant.bits, mode="kmeans", granularity="per_tensor", weight_threshold=0
        )
    mode = "linear_symmetric" if quant.symmetric else "linear"
    dtype = "int4" if quant.bits == 4 else "int8"
    if quant.group_size:
        return cto.OpLinearQuantizerConfig(
            mode=mode, dtype=dtype, granularity="per_block", block_size=quant.group_size, weight_threshold=0
        )
    return cto.OpLinearQuantizerConfig(mode=mode, dtype=dtype, granularity="per_channel", weight_threshold=0)


# --- metadata ----------------------------------------------------------------------------------------------


def add_metadata(mlmodel, request: ExportRequest, compute: str, layout: dict) -> None:
    """What swift-transformers and a device-side reader need, in the package's own metadata."""
    import edgepack

    checkpoint, recipe = request.checkpoint, request.recipe
    mlmodel.author = "edgepack"
    mlmodel.version = edgepack.__version__
    mlmodel.short_description = (
        f"{checkpoint.model_id} ({recipe.name}), stateful KV cache, {request.max_seq_len} tokens"
    )
    mlmodel.input_description["inputIds"] = (
        "token ids of this chunk, [1, query_length] (prefill chunk or 1 token)"
    )
    mlmodel.input_description["causalMask"] = (
        "additive mask [1, 1, query_length, end_step]: 0 where a query may attend, -inf (or -65504) elsewhere; "
        "the chunk starts at end_step - query_length"
    )
    mlmodel.output_description["logits"] = "next-token logits [1, query_length, vocab]"
    meta = mlmodel.user_defined_metadata
    meta.update(
        {
            "co.huggingface.exporters.name": checkpoint.model_id,
            "co.huggingface.exporters.task": "text-generation",
            "co.huggingface.exporters.architecture": ",".join(checkpoint.config_dict.get("architectures") or []),
            "co.huggingface.exporters.framework": "pytorch",
            "co.huggingface.exporters.precision": compute,
            "edgepack.version": edgepack.__version__,
            "edgepack.recipe": recipe.name,
            "edgepack.recipe_digest": recipe.digest(),
            "edgepack.context_length": str(request.max_seq_len),
            "edgepack.model_context_length": str(checkpoint.context_length),
            "edgepack.tokenizer_files": json.dumps([f"tokenizer/{n}" for n in request.tokenizer_files()]),
            "edgepack.eos_token_id": json.dumps(list(request.special_ids().eos)),
            "edgepack.bos_token_id": json.dumps(request.special_ids().bos),
            "edgepack.cache_layout": layout["cache_layout"],
        }
    )
