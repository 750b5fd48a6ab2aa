"""Core ML runner: the saved .mlpackage's program, translated to ONNX and run by onnxruntime (any OS).

Options: ``fp16`` (None: the program's own precision; True: every float op at fp16, the way the device
computes; False: fp32 throughout), ``native`` (macOS only: the real Core ML runtime instead of the
translation), ``max_seq_len`` (defaults to the artifact's).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ArtifactError

MASKED = np.finfo(np.float16).min  # an additive mask value that stays finite in fp16


def causal_mask(start: int, count: int) -> np.ndarray:
    """The [1, 1, count, start + count] additive mask of a chunk of ``count`` tokens after ``start`` tokens."""
    end = start + count
    rows = np.arange(start, end)[:, None]
    cols = np.arange(end)[None, :]
    return np.where(cols <= rows, 0.0, MASKED).astype(np.float32)[None, None]


class TranslatedCoreMLRunner:
    """Runs the translated program in onnxruntime, carrying the KV-cache states between calls."""

    def __init__(self, package: Path, max_seq_len: int, *, fp16: bool | None = None):
        import onnxruntime as ort

        from edgepack.backends.coreml.mil2onnx import translate

        float_type = None if fp16 is None else ("float16" if fp16 else "float32")
        self.translation = translate(package, float_type=float_type)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Constant folding would dequantize every weight once, up front: the whole model in float (see mil2onnx).
        self.session = _session(self.translation.model, options, disabled_optimizers=["ConstantFolding"])
        self.translation.model = None  # the session holds the weights now
        self.input_types = {i.name: _np_type(i.type) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.max_seq_len = max_seq_len
        self.reset()

    def reset(self) -> None:
        self.states = {n: np.zeros(shape, dtype) for n, (shape, dtype) in self.translation.states.items()}
        self.position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        count = _check_room(self, tokens)
        feeds = {
            "inputIds": np.asarray(tokens, dtype=np.int32)[None],
            "causalMask": causal_mask(self.position, count).astype(self.input_types["causalMask"]),
            **self.states,
        }
        results = dict(zip(self.output_names, self.session.run(None, feeds)))
        self.states = {n: results[f"{n}_out"] for n in self.states}
        self.position += count
        return results["logits"][0].astype(np.float32)


def _session(model, options, **kwargs):
    """An onnxruntime session of ``model``; past protobuf's 2 GiB limit the weights go through an external data
    file (a 4B model's packed int4 weights alone are 1.7 GB)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if sum(len(t.raw_data) for t in model.graph.initializer) < EXTERNAL_DATA_BYTES:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "translated.onnx"
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="translated.onnx.data", size_threshold=1024)  # fmt: skip
        return ort.InferenceSession(str(path), options, providers=providers, **kwargs)


EXTERNAL_DATA_BYTES = 1_800_000_000


class NativeCoreMLRunner:
    """The real Core ML runtime (macOS only)."""

    def __init__(self, package: Path, max_seq_len: int):
        import coremltools as ct
        from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

        self.model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_AND_NE)
        inputs = {i.name: i for i in self.model.get_spec().description.input}
        fp16 = inputs["causalMask"].type.multiArrayType.dataType == ArrayFeatureType.FLOAT16
        self.mask_dtype = np.float16 if fp16 else np.float32
        self.max_seq_len = max_seq_len
        self.reset()

    def reset(self) -> None:
        self.state = self.model.make_state()
        self.position = 0

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        count = _check_room(self, tokens)
        feeds = {
            "inputIds": np.asarray(tokens, dtype=np.int32)[None],
            "causalMask": causal_mask(self.position, count).astype(self.mask_dtype),
        }
        logits = self.model.predict(feeds, state=self.state)["logits"]
        self.position += count
        return np.asarray(logits)[0].astype(np.float32)


def _check_room(runner, tokens) -> int:
    count = len(tokens)
    if count == 0 or runner.position + count > runner.max_seq_len:
        raise ArtifactError(
            f"Core ML runner: {runner.position} + {count} tokens do not fit the export's "
            f"{runner.max_seq_len}-token context; export with a larger --max-seq-len."
        )
    return count


def _np_type(onnx_type: str):
    return {"tensor(float16)": np.float16, "tensor(float)": np.float32}.get(onnx_type, np.int32)


def open_coreml(
    export_root: Path,
    artifact,
    *,
    fp16: bool | None = None,
    native: bool = False,
    max_seq_len: int | None = None,
):
    package = Path(export_root) / artifact.path
    length = max_seq_len or artifact.max_seq_len
    if native:
        if sys.platform != "darwin":
            raise ArtifactError("native=True needs macOS: Core ML predicts only on Apple platforms.")
        return NativeCoreMLRunner(package, length)
    return TranslatedCoreMLRunner(package, length, fp16=fp16)
