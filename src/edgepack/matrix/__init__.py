"""The export matrix: models x recipes x targets, each cell one ``edgepack.pipeline.export``, checked against
the device profiles.

Stages: load the config (typed, validated; ``config``) -> expand the cells (sorted, so shards are stable) -> key
each cell -> run the cells no store holds, on local worker processes or on Ray (``run``, ``ray_executor``) -> fit
each cell's artifact to the devices -> summary.

Cache: a cell's key is the sha256 of its weights digest, recipe digest, target, max_seq_len, parity flag, and
the versions of edgepack and of the target's backend packages. A cell is finished when its record is published
(``store``): ``OUT/cache/<key>.json`` beside ``OUT/cells/``, or in a shared cache (a path or fsspec URL every node
reaches) from which the driver copies it into ``OUT``. The record is written only after the cell's files are
complete, so a matrix killed half-way reruns exactly the cells that had not finished, and an unchanged cell is
never exported twice.
"""

from edgepack.matrix.config import (  # noqa: F401 - the matrix API
    CELLS_DIR,
    SUMMARY_FILE,
    Cell,
    Matrix,
    MatrixConfig,
    ModelEntry,
    backend_versions,
    cell_keys,
    cell_memory,
    github_matrix,
    load_matrix,
    parse_shard,
    select,
)
from edgepack.matrix.cell import CellJob, CellResult, Runner, export_cell, run_cell  # noqa: F401
from edgepack.matrix.run import format_summary, run_matrix  # noqa: F401
from edgepack.matrix.store import FolderStore, SharedStore  # noqa: F401
