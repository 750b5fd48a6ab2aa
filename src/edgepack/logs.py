"""Library noise: edgepack reports progress itself, so the libraries it drives are told to keep quiet."""

from __future__ import annotations

_quiet = False


def libraries_quieted() -> bool:
    """Whether this process asked for quiet libraries (worker processes it spawns then ask too)."""
    return _quiet


def quiet_libraries() -> None:
    """Silence the progress bars and warnings of transformers/torch; edgepack reports progress itself."""
    global _quiet
    _quiet = True
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Some libraries use tqdm directly (transformers' GGUF reader: "Converting and de-quantizing GGUF tensors",
    # shown on make demo's first run); tqdm reads TQDM_* variables at each bar.
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    # torch sets its own loggers' levels when it is imported (torch._logging), so import it first; torchao's
    # import then logs its pytree deprecations at a level that is dropped.
    import torch  # noqa: F401

    for name in ("torch", "torchao", "transformers", "executorch", "coremltools", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass
