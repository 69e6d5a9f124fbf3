"""Fixtures writing tiny datasets in exactly the standard on-disk formats."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from bitnas.data import datasets

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic, big-endian uint32 dims, then the uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, magic: int) -> Path:
    """Write an IDX file, gzipped if the name ends in .gz."""
    data = idx_bytes(arr, magic)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_fashion_mnist(d: Path, gz: bool, n_train: int = 30, n_test: int = 20,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Both splits of a tiny Fashion-MNIST in `d`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(d / f"{prefix}-images-idx3-ubyte{ext}", images, IMAGES_MAGIC)
        write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", labels, LABELS_MAGIC)
        out[f"{prefix}_images"], out[f"{prefix}_labels"] = images, labels
    return out


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
    monkeypatch.setattr(datasets, "REPO_SHARED_DATASETS", tmp_path / "repo_shared" / "datasets")
    monkeypatch.setattr(datasets, "SYSTEM_DATASETS", tmp_path / "system" / "datasets")
    return {"env": env, "cwd_shared": cwd_shared}


@pytest.fixture
def fmnist_writer() -> Callable[..., dict[str, np.ndarray]]:
    return write_fashion_mnist


@pytest.fixture
def idx_writer() -> Callable[[Path, np.ndarray, int], Path]:
    return write_idx


@pytest.fixture
def cifar_writer() -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    return write_cifar


@pytest.fixture
def pickle_writer() -> Callable[[Path, object], Path]:
    return write_pickle
