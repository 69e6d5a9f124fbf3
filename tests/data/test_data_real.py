"""The full Fashion-MNIST copy, the embedded subset and the fallback between them."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bitnas.data import load_dataset
from bitnas.data.formats.embedded import EMBEDDED_FASHION_MNIST
from bitnas.data.locations import search_dirs

FULL = next((d for d in search_dirs("fashion-mnist") if (d / "train-images-idx3-ubyte.gz").is_file()),
            Path("fashion-mnist-not-found"))


@pytest.mark.skipif(not (FULL / "train-images-idx3-ubyte.gz").is_file(), reason="full Fashion-MNIST absent")
def test_full_fashion_mnist() -> None:
    train = load_dataset(f"fashion-mnist:{FULL}", "train")
    test = load_dataset(f"fashion-mnist:{FULL}", "test")
    assert train.images.shape == (60000, 1, 28, 28) and len(train) == 60000
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert abs(train.images.float().mean().item() / 255 - train.mean[0]) < 1e-3


def test_embedded_subset() -> None:
    assert EMBEDDED_FASHION_MNIST.stat().st_size <= 5 * 1024 * 1024
    train = load_dataset("fashion-mnist-embedded", "train")
    test = load_dataset("fashion-mnist-embedded", "test")
    assert train.images.shape == (8000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 800))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 200))
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.name == "fashion-mnist-embedded" and train.source == str(EMBEDDED_FASHION_MNIST)


def test_fallback_to_embedded_with_warning(isolated_search, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="bitnas")
    ds = load_dataset("fashion-mnist", "train")
    assert len(ds) == 8000 and ds.name == "fashion-mnist-embedded"
    warnings = [r for r in caplog.records if r.name == "bitnas" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "full copy not found" in msg and "embedded subset" in msg
    assert str(isolated_search["env"] / "fashion-mnist") in msg


def test_no_warning_when_full_copy_found(isolated_search, fmnist_writer, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="bitnas")
    fmnist_writer(isolated_search["env"] / "fashion-mnist", gz=True)
    assert load_dataset("fashion-mnist", "train").name == "fashion-mnist"
    assert not [r for r in caplog.records if r.name == "bitnas"]
