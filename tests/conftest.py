"""Shared test settings and fixtures writing tiny Fashion-MNIST IDX files."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, and a shared machine loses a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def process_state():
    """Undo what a run started in this process changes process-wide: bitnas log handlers, level and
    propagation, torch threads. `process_state.detach()` starts with no bitnas handlers (so the
    command's own one writes to this test's captured stderr)."""
    import logging

    log = logging.getLogger("bitnas")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    threads = torch.get_num_threads()

    class State:
        @staticmethod
        def detach() -> None:
            for h in list(log.handlers):
                log.removeHandler(h)

    yield State
    for h in log.handlers:
        if h not in handlers:
            h.close()
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate
    torch.set_num_threads(threads)


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


@pytest.fixture
def fmnist_writer() -> Callable[..., dict[str, np.ndarray]]:
    return write_fashion_mnist


@pytest.fixture
def idx_writer() -> Callable[[Path, np.ndarray, int], Path]:
    return write_idx
