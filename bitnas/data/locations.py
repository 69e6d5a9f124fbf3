"""Where datasets are looked for: $BITNAS_DATA, ../shared/datasets from the cwd, the repository's
shared folder, /usr/share/datasets (module attributes, so tests can point them elsewhere)."""
from __future__ import annotations

import os
from pathlib import Path

import bitnas

REPO_SHARED_DATASETS = Path(bitnas.__file__).resolve().parents[2] / "shared" / "datasets"
SYSTEM_DATASETS = Path("/usr/share/datasets")


def search_dirs(*subdirs: str) -> list[Path]:
    """Default directories for a dataset, in search order, without duplicates."""
    bases: list[Path] = []
    env = os.environ.get("BITNAS_DATA")
    if env:
        bases.append(Path(env).expanduser())
    bases += [Path.cwd().parent / "shared" / "datasets", REPO_SHARED_DATASETS, SYSTEM_DATASETS]
    out: list[Path] = []
    seen: set[str] = set()
    for base in bases:
        for sub in subdirs:
            d = base / sub
            key = os.path.abspath(d)
            if key not in seen:
                seen.add(key)
                out.append(d)
    return out

