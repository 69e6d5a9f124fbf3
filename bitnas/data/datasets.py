"""The dataset registry: `load_dataset("NAME[:PATH]", split)` for every format in data/formats/.

Every loader returns an `ImageDataset` holding uint8 images (N×C×H×W) and int64 labels.
Bad input of any kind (missing, truncated or inconsistent files) raises `DataError` with a
one-line message naming the file or option and the problem.
"""
from __future__ import annotations

from typing import Callable

from bitnas.data.formats.cifar import load_cifar10, load_cifar100
from bitnas.data.formats.embedded import load_fashion_mnist_embedded
from bitnas.data.formats.idx import load_fashion_mnist, load_generic_idx, load_kmnist, load_mnist
from bitnas.data.formats.imagefolder import load_imagefolder
from bitnas.data.imagedata import ImageDataset, ImageSize
from bitnas.errors import DataError
from bitnas.registry import Registry

DatasetLoader = Callable[[str | None, str, ImageSize | None], ImageDataset]

DATASETS: Registry[DatasetLoader] = Registry("dataset")
SPLITS = ("train", "test")


def load_dataset(spec: str, split: str, *, image_size: ImageSize | None = None) -> ImageDataset:
    """Load split 'train' or 'test' of dataset `spec` = NAME[:PATH] (names: see DATASETS).

    `image_size` (int or (H, W)) resizes image folders; other datasets have a fixed size.
    """
    if split not in SPLITS:
        raise DataError(f"split: must be 'train' or 'test', got '{split}'")
    name, sep, path = spec.partition(":")
    if sep and not path:
        raise DataError(f"dataset '{spec}': empty PATH after ':' (use NAME or NAME:PATH)")
    loader = DATASETS.get(name.strip())
    return loader(path or None, split, image_size)



DATASETS.register("fashion-mnist", load_fashion_mnist, aliases=("fashion_mnist", "fmnist"))
DATASETS.register("fashion-mnist-embedded", load_fashion_mnist_embedded,
                  aliases=("fashion_mnist_embedded", "fmnist-embedded"))
DATASETS.register("mnist", load_mnist)
DATASETS.register("kmnist", load_kmnist, aliases=("k-mnist", "kuzushiji-mnist"))
DATASETS.register("idx", load_generic_idx)
DATASETS.register("cifar10", load_cifar10, aliases=("cifar-10",))
DATASETS.register("cifar100", load_cifar100, aliases=("cifar-100",))
DATASETS.register("imagefolder", load_imagefolder, aliases=("image-folder",))
