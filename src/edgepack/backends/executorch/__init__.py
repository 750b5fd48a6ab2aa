"""ExecuTorch (.pte, XNNPACK): ``exporter`` lowers the torchao-quantized model (``quantize``) wrapped over
ExecuTorch's LLM ops (``model``); ``runner`` runs the program in ExecuTorch's Python runtime."""

from edgepack.backends import MIB, Backend, ExportCost, RuntimeCost

BACKEND = Backend(
    name="executorch",
    runtime="executorch",
    device_runtime="executorch-xnnpack",
    platforms=("android",),
    runtime_version="1.5",
    min_os={},
    packages=("executorch", "torch", "torchao", "transformers"),
    # Assumed, then checked untuned on SmolLM2 int4-block32 at 2048 positions: 0.81-0.88 of the measured peak
    # (docs/memory.md). The runtime runs the .pte's buffers in place, with no arena of its own.
    cost=RuntimeCost(40 * MIB),
    # bench-stages: SmolLM2 export 1.85 GB; Ministral 3 3B export 1.21x, parity 1.24x the checkpoint.
    export_cost=ExportCost(1600 * MIB, 1.21, 1600 * MIB, 1.24),
    exporter="edgepack.backends.executorch.exporter:ExecuTorchExporter",
    runner="edgepack.backends.executorch.runner:ExecuTorchRunner",
    # XNNPACK's kernels are symmetric: a linear's zero points become a float correction over its group sums
    # (model.ZeroPointLinear), so the .pte computes the recipe's own codes.
    min_seq_len=3,  # torch.export traces a 2-token example prefill (0 and 1 specialize) below max_seq_len
    zero_points=True,
    float_zero_points=True,
    native_tokenizer=True,  # its runner reads tokenizer.model / tekken.json where the checkpoint has one
    preload=(
        "torch",
        "executorch.runtime",
        "executorch.kernels.quantized",
        "executorch.extension.llm.custom_ops.custom_ops",
    ),
    threads_hook="edgepack.backends.executorch.runner:set_threads",
    label_suffix=" (XNNPACK)",
)
