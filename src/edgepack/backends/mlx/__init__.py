"""MLX (mlx-lm on macOS and Linux, mlx-swift on iOS and macOS): ``exporter`` writes the folder ``mlx_lm.load``
reads (safetensors with MLX's affine-packed codes, config.json with its ``quantization`` block, the tokenizer);
``runner`` runs it in MLX with mlx-lm's KV cache (the ``mlx[cpu]`` wheel off a Mac)."""

from edgepack.backends import MIB, Backend, ExportCost, RuntimeCost

BACKEND = Backend(
    name="mlx",
    runtime="mlx",
    device_runtime="mlx",
    platforms=("ios",),
    os_names=("ios", "macos", "linux"),
    runtime_version="0.32",  # mlx 0.32 / mlx-lm 0.32: per-module group sizes inferred from the saved shapes
    # mlx-swift's package platforms (Package.swift): iOS 17, macOS 14.
    min_os={"ios": "17.0", "macos": "14.0"},
    packages=("mlx", "mlx-lm", "safetensors", "torch", "transformers"),
    # Assumed, not measured on a device: MLX maps the safetensors file and keeps no arena beyond its buffer cache;
    # mlx-lm's KVCache grows in steps of 256 positions.
    cost=RuntimeCost(100 * MIB, kv_grows=True),
    # bench-stages: SmolLM2 export 0.62 GB, parity 1.31 GB (2026-12-02); Ministral 3 3B export 0.67x the checkpoint.
    # Parity at 4B not measured: assumed the streamed reference (0.95x, as ONNX's) plus the artifact in MLX.
    export_cost=ExportCost(600 * MIB, 0.67, 1100 * MIB, 1.3),
    exporter="edgepack.backends.mlx.exporter:MLXExporter",
    runner="edgepack.backends.mlx.runner:MLXRunner",
    preload=("mlx.core", "mlx_lm"),
)
