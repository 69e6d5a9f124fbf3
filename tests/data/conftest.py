"""Fixtures writing tiny datasets in exactly the standard on-disk formats."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from bitnas.data import locations


def write_pickle(path: Path, obj: object) -> Path:
    """Protocol-2 pickle like the original CIFAR files."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def write_cifar(parent: Path, num_classes: int, n_per_file: int = 6,
                seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny cifar-10-batches-py/ or cifar-100-python/ directory under `parent`."""
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        d = parent / "cifar-10-batches-py"
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"
        write_meta = (d / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        d = parent / "cifar-100-python"
        train_files, test_files, key = ["train"], ["test"], b"fine_labels"
        write_meta = (d / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    d.mkdir(parents=True)
    out: dict[str, list] = {"train_data": [], "train_labels": [], "test_data": [], "test_labels": []}
    for split, files in (("train", train_files), ("test", test_files)):
        for name in files:
            data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
            labels = rng.integers(0, num_classes, n_per_file).tolist()
            batch = {b"batch_label": name.encode(), b"data": data, key: labels,
                     b"filenames": [f"{i}.png".encode() for i in range(n_per_file)]}
            if num_classes == 100:
                batch[b"coarse_labels"] = [lab // 5 for lab in labels]
            write_pickle(d / name, batch)
            out[f"{split}_data"].append(data)
            out[f"{split}_labels"] += labels
    write_pickle(*write_meta)
    arrays = {k: np.concatenate(v) if k.endswith("data") else np.array(v) for k, v in out.items()}
    return d, arrays


@pytest.fixture
def isolated_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every default dataset location into tmp_path (all initially empty)."""
    env = tmp_path / "env"
    cwd = tmp_path / "work" / "main"
    cwd_shared = tmp_path / "work" / "shared" / "datasets"
    for p in (env, cwd):
        p.mkdir(parents=True)
    monkeypatch.setenv("BITNAS_DATA", str(env))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(locations, "REPO_SHARED_DATASETS", tmp_path / "repo_shared" / "datasets")
    monkeypatch.setattr(locations, "SYSTEM_DATASETS", tmp_path / "system" / "datasets")
    return {"env": env, "cwd_shared": cwd_shared}


@pytest.fixture
def cifar_writer() -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    return write_cifar


@pytest.fixture
def pickle_writer() -> Callable[[Path, object], Path]:
    return write_pickle
