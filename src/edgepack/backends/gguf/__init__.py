"""GGUF (llama.cpp, ollama): ``exporter`` writes one .gguf file (the recipe's codes in llama.cpp's block types,
the tokenizer, chat template and hyper-parameters as llama.cpp's own converter writes them) and an ollama
``Modelfile``; ``runner`` runs the file in llama.cpp (llama-cpp-python) where it is installed, else reads it back
with ``gguf``'s reader and runs the dequantized weights in torch."""

from edgepack.backends import MIB, Backend, ExportCost, RuntimeCost

# llama.cpp for parity and bench (the `llama-cpp` extra, `make llama-cpp`, the slow tier, the llama.cpp anchor): pip
# builds it from source. Not -march=native: on a CPU that reports AMX to a VM that does not enable it, ggml's AMX
# kernels die with SIGILL on any batched Q4/Q8 matmul (measured here); the portable build uses AVX2/FMA/F16C.
LLAMA_CPP = "llama-cpp-python==0.3.36"
LLAMA_CPP_CMAKE_ARGS = "-DGGML_NATIVE=OFF"

BACKEND = Backend(
    name="gguf",
    runtime="llama.cpp",
    device_runtime="llama.cpp",
    platforms=("android",),
    os_names=None,  # llama.cpp builds for Android, iOS, macOS, Linux and Windows
    # llama.cpp has build numbers, not versions; the mistral3 architecture needs a build from December 2025 on.
    # Checked with the llama.cpp vendored by llama-cpp-python 0.3.36.
    runtime_version=None,
    min_os={},
    packages=("gguf", "tokenizers", "torch", "transformers"),
    # Assumed, not measured on a device: llama.cpp maps the file, allocates its f16 KV cache for the whole context
    # up front (a window-sized ring for sliding layers of the architectures it applies windows to) and a compute
    # buffer of some tens of MiB.
    cost=RuntimeCost(60 * MIB, kv_dtype="float16", kv_window_aware=True),
    # bench-stages: SmolLM2 export 0.60-1.10 GB, parity 1.32 GB (2026-12-02); Ministral 3 3B export 0.60x the
    # checkpoint. Parity at 4B not measured: without llama.cpp the reader's runner holds the weights in float32
    # (2x the bf16 checkpoint) beside the streamed reference.
    export_cost=ExportCost(1000 * MIB, 0.60, 1100 * MIB, 2.2),
    exporter="edgepack.backends.gguf.exporter:GGUFExporter",
    runner="edgepack.backends.gguf.runner:open_runner",
    # The tokenizer travels inside the .gguf, written from the packaged tokenizer.json (hence not "native").
    threads_option=True,
    label_package="llama-cpp-python",
)
