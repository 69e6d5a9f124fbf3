"""The class-balanced Fashion-MNIST subset shipped with bitnas (data/embedded/, see its README)."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from bitnas.data.checks import check_labels, no_resize
from bitnas.data.imagedata import ImageDataset, ImageSize
from bitnas.errors import DataError

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "embedded"
EMBEDDED_FASHION_MNIST = EMBEDDED_DIR / "fashion_mnist_subset.npz"
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def load_fashion_mnist_embedded(path: str | None, split: str,
                                image_size: ImageSize | None = None) -> ImageDataset:
    """The class-balanced Fashion-MNIST subset shipped with bitnas (see data/embedded/README.md)."""
    no_resize("fashion-mnist-embedded", image_size)
    f = Path(path).expanduser() if path else EMBEDDED_FASHION_MNIST
    if not f.is_file():
        raise DataError(f"{f}: embedded Fashion-MNIST subset not found")
    try:
        with np.load(f, allow_pickle=False) as z:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    except KeyError as e:
        raise DataError(f"{f}: missing array {e}") from None
    except (OSError, ValueError, zlib.error, EOFError) as e:
        raise DataError(f"{f}: unreadable npz file ({e})") from None
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{f}: {split}_images must be uint8 N×H×W, got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{f}: {len(labels)} {split} labels but {len(images)} {split} images")
    if len(images) == 0:
        raise DataError(f"{f}: empty dataset (0 {split} images)")
    labels = labels.astype(np.int64)
    check_labels(f, labels, 10)
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1), labels=torch.from_numpy(labels),
        num_classes=10, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
        name="fashion-mnist-embedded", source=str(f), classes=FASHION_MNIST_CLASSES,
    )
