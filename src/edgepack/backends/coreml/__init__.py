"""Core ML (.mlpackage, stateful KV cache): ``exporter`` converts the stateful wrapper (``model``) with
coremltools; ``runner`` predicts natively on macOS, elsewhere runs the saved MIL program translated to ONNX
(``mil2onnx``) in onnxruntime."""

from edgepack.backends import MIB, Backend, ExportCost, RuntimeCost

BACKEND = Backend(
    name="coreml",
    runtime="coreml",
    device_runtime="coreml",
    platforms=("ios",),
    runtime_version=None,
    min_os={"ios": "18.0", "macos": "15.0"},  # MLState: stateful (KV-cache) models
    packages=("coremltools", "torch", "transformers"),
    # Assumed: Core ML loads a compiled copy of the model; its KV state is fp16 whatever the recipe says.
    cost=RuntimeCost(120 * MIB, kv_dtype="float16"),
    # bench-stages: SmolLM2 export 1.94-2.26 GB, parity 2.36 GB; Ministral 3 3B export 0.77x, parity 1.85x.
    export_cost=ExportCost(2150 * MIB, 0.77, 2000 * MIB, 1.85),
    exporter="edgepack.backends.coreml.exporter:CoreMLExporter",
    runner="edgepack.backends.coreml.runner:open_coreml",
    os_names=("ios", "macos"),
    preload=("onnxruntime",),
    host_note="simulated (onnxruntime): Core ML's MIL program translated to ONNX, not a device runtime",
    label_package="onnxruntime",  # off a Mac its MIL program runs translated to ONNX
)
