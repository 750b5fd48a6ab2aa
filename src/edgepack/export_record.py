"""``export.json``: the build record of an export folder, one typed reader and writer.

The pipeline writes it before any target exports (checkpoint facts, the recipe, the packaged tokenizer, the
context) and adds the code books once they are computed; parity, the manifest, memory planning, bench and the
report read it back through ``ExportRecord.read``. Unknown keys are refused and every problem is reported at once,
so an edited or foreign file fails with one message instead of a KeyError deep in a later stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgepack.atomic import write_text
from edgepack.config import Strict, read_data, validate
from edgepack.errors import ArtifactError, ConfigError

EXPORT_FILE = "export.json"


class CheckpointRecord(Strict):
    """What the manifest, parity and memory planning need to know of the checkpoint, without loading it."""

    source: str | None = Field(None, description="what the user passed; a build record, never bundled")
    path: str | None = Field(None, description="the resolved local folder or file the weights came from")
    public_source: str | None = None
    model_id: str | None = None
    architecture: str | None = None
    cloud_default: str | None = None
    model_type: str | None = None
    wrapper: str | None = None
    not_exported: dict[str, str] = Field(default_factory=dict)
    license: str | None = None
    num_parameters: int | None = None
    dtype: str | None = None
    source_precision: str | None = None
    rope: dict[str, Any] | None = None
    weights_digest: str | None = None
    context_length: int | None = None
    sliding_window: int | None = None
    windows: list[int | None] | None = Field(None, description="per layer: its attention window, None = full")
    layer_types: list[str] | None = None
    num_layers: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    tie_word_embeddings: bool | None = None


class CodesRecord(Strict):
    """Where a code book is cached and how its codes were found (``edgepack.codes.CodeBook.record``)."""

    key: str
    path: str
    method: str | None = None
    calibration: dict[str, Any] | None = None
    seconds: float | None = None
    layer_seconds: list[float] | None = None
    damping_raised: dict[str, float] | None = None
    symmetric_only: bool | None = None


class ExportRecord(Strict):
    edgepack_version: str | None = None
    checkpoint: CheckpointRecord
    recipe: dict[str, Any] = Field(description="the recipe as loaded (edgepack.recipes.Recipe, JSON mode)")
    recipe_digest: str | None = None
    tokenizer: dict[str, Any] | None = None
    max_seq_len: int | None = None
    targets: list[str] = Field(default_factory=list)
    codes: dict[str, CodesRecord] = Field(default_factory=dict, description="code book per kind: zero_points, symmetric")

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id or ""

    @property
    def recipe_name(self) -> str:
        return str(self.recipe.get("name", ""))

    @property
    def dtype(self) -> str:
        return str(self.recipe.get("dtype", "float32"))

    @classmethod
    def read(cls, folder: str | Path) -> ExportRecord:
        """The record of the export folder ``folder``; ArtifactError when it has none or it does not validate."""
        path = Path(folder) / EXPORT_FILE
        if not path.is_file():
            raise ArtifactError(f"{folder} is not an edgepack export folder (no {EXPORT_FILE}).")
        try:
            return validate(cls, read_data(path), str(path))
        except ConfigError as exc:
            raise ArtifactError(f"{exc} -- not an edgepack export record; export again.") from None

    def write(self, folder: str | Path) -> Path:
        return write_text(Path(folder) / EXPORT_FILE, self.model_dump_json(indent=2) + "\n")

    def with_codes(self, codes: dict[str, dict]) -> ExportRecord:
        return self.model_copy(update={"codes": {k: CodesRecord.model_validate(v) for k, v in codes.items()}})


def is_export_folder(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file()
