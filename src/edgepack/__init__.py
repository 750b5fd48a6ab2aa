"""edgepack: Hugging Face checkpoints of small LLMs into Core ML, ExecuTorch, ONNX and MLX artifacts phones run.

The pipeline (see ``edgepack.pipeline``): load -> quantize -> export -> verify -> package.
Importing this package is cheap: torch and the export backends load only when a stage needs them.
"""

__version__ = "0.1.0"
