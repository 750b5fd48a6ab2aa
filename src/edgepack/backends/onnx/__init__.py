"""ONNX (onnxruntime, onnxruntime-genai): ``exporter`` traces the past/present wrapper (``model``) and packs the
codes into MatMulNBits / GatherBlockQuantized (``weights``); ``runner`` runs it in onnxruntime."""

from edgepack.backends import MIB, Backend, ExportCost, RuntimeCost

BACKEND = Backend(
    name="onnx",
    runtime="onnxruntime",
    device_runtime="onnxruntime",
    platforms=("android",),
    runtime_version="1.20",  # MatMulNBits 8-bit, GatherBlockQuantized
    min_os={},
    packages=("onnx", "onnxruntime", "onnxscript", "torch", "transformers"),
    # Measured on the x86 host with SmolLM2 int4-block32 (202 MiB model.onnx): peak RSS less the interpreter's
    # baseline was weights + KV cache + 204 MiB at 1024 tokens and + 226 MiB at 512 (prepacked MatMulNBits
    # copies, the arena), i.e. a base of about 160 MiB once the activations term is taken off.
    cost=RuntimeCost(160 * MIB, kv_grows=True),  # past/present: the cache grows with the tokens held
    # bench-stages: SmolLM2 export 1.32 GB, parity 1.45 GB; Ministral 3 3B export 0.86x, parity 0.95x the checkpoint.
    export_cost=ExportCost(1150 * MIB, 0.86, 1300 * MIB, 0.95),
    exporter="edgepack.backends.onnx.exporter:OnnxExporter",
    runner="edgepack.backends.onnx.runner:OnnxRunner",
    preload=("onnxruntime",),
    threads_option=True,
)
