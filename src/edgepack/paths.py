"""Where shipped data lives: the repository's recipes/ and devices/ folders, and the package's data/ folder."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
# edgepack installs editable from its checkout (see README), so the repo's data folders sit two levels up.
REPO_DIR = PACKAGE_DIR.parents[1]


def shipped_dir(name: str) -> Path:
    """``recipes`` or ``devices``: $EDGEPACK_<NAME>_DIR if set, else the checkout's folder."""
    override = os.environ.get(f"EDGEPACK_{name.upper()}_DIR")
    return Path(override) if override else REPO_DIR / name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where the demo keeps its converted checkpoint: $EDGEPACK_CACHE or ~/.cache/edgepack."""
    return Path(os.environ.get("EDGEPACK_CACHE", Path.home() / ".cache" / "edgepack"))
