"""MNIST-style IDX files (Fashion-MNIST, MNIST, Kuzushiji-MNIST, any idx:DIR), gzipped or not."""
from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitnas.data.checks import check_labels, no_resize
from bitnas.data.formats.embedded import (
    EMBEDDED_FASHION_MNIST, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist_embedded,
)
from bitnas.data.imagedata import ImageDataset, ImageSize
from bitnas.data.locations import search_dirs
from bitnas.data.stats import channel_stats
from bitnas.errors import DataError

log = logging.getLogger("bitnas")

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def _idx_names(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_file(directory: Path, stem: str) -> Path | None:
    """`directory/stem` or `directory/stem.gz`, whichever exists."""
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _read_bytes(path: Path) -> bytes:
    """File contents, transparently gunzipped (detected by the gzip magic bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(f"{path}: truncated gzip file (compressed stream ends early)") from None
    except (zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt gzip file ({e})") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with the expected magic number into a numpy array."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, the header alone needs {header})")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "image" if magic == IDX_IMAGES_MAGIC else "label"
        raise DataError(f"{path}: wrong IDX magic number 0x{found:08x} "
                        f"(expected 0x{magic:08x} for an {kind} file)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    body = len(data) - header
    if body < expected:
        raise DataError(f"{path}: truncated IDX file (header {dims} needs {expected} data bytes, "
                        f"found {body})")
    if body > expected:
        raise DataError(f"{path}: {body - expected} unexpected bytes after the IDX data {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


@dataclass(frozen=True)
class IdxSpec:
    """A dataset in the MNIST IDX layout: its name, folder names to look for, classes and statistics
    (None: computed from the training images, classes from the largest training label)."""

    name: str
    dirnames: tuple[str, ...]
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


FASHION_MNIST = IdxSpec("fashion-mnist", ("fashion-mnist",), FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN,
                        FASHION_MNIST_STD)
MNIST = IdxSpec("mnist", ("mnist", "MNIST"), tuple(str(d) for d in range(10)), (0.1307,), (0.3081,))
KMNIST = IdxSpec("kmnist", ("kmnist", "KMNIST"), ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                 (0.1918,), (0.3483,))
GENERIC_IDX = IdxSpec("idx", ())


def _read_idx_split(directory: Path, split: str, name: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(images N×H×W, int64 labels, label file) of one split, checked for consistency."""
    img_stem, lab_stem = _idx_names(split)
    img_path = _find_file(directory, img_stem)
    lab_path = _find_file(directory, lab_stem)
    for stem, p in ((img_stem, img_path), (lab_stem, lab_path)):
        if p is None:
            raise DataError(f"{name}: {stem}[.gz] not found in {directory}")
    assert img_path is not None and lab_path is not None
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lab_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{lab_path}: {len(labels)} labels but {img_path.name} has {len(images)} images")
    if len(images) == 0:
        raise DataError(f"{img_path}: empty dataset (0 images)")
    return images, labels.astype(np.int64), lab_path


def _load_idx_dir(directory: Path, split: str, spec: IdxSpec = FASHION_MNIST) -> ImageDataset:
    images, labels, lab_path = _read_idx_split(directory, split, spec.name)
    classes, mean, std = spec.classes, spec.mean, spec.std
    if classes is None or mean is None or std is None:
        train_images, train_labels, _ = (images, labels, lab_path) if split == "train" else \
            _read_idx_split(directory, "train", spec.name)
        classes = classes or tuple(str(c) for c in range(int(train_labels.max()) + 1))
        if mean is None or std is None:
            mean, std = channel_stats(train_images[:, None])
    check_labels(lab_path, labels, len(classes))
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1), labels=torch.from_numpy(labels),
        num_classes=len(classes), mean=mean, std=std, name=spec.name, source=str(directory), classes=classes,
    )


def _idx_dir(spec: IdxSpec, path: str, split: str) -> Path:
    """The directory given as NAME:PATH, or its subfolder named like the dataset."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise DataError(f"{spec.name}:{path}: directory does not exist")
    for sub in spec.dirnames:
        if not _has_idx(d, split) and _has_idx(d / sub, split):
            return d / sub
    return d


def _find_idx_dir(spec: IdxSpec) -> Path | None:
    """The first default location holding any IDX file of `spec` (None if none does)."""
    all_stems = _idx_names("train") + _idx_names("test")
    for d in search_dirs(*spec.dirnames):
        if d.is_dir() and any(_find_file(d, stem) for stem in all_stems):
            return d
    return None


def load_idx(spec: IdxSpec, path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """An IDX dataset from NAME:PATH or its default locations ($BITNAS_DATA, ../shared/datasets, …)."""
    no_resize(spec.name, image_size)
    if path is not None:
        return _load_idx_dir(_idx_dir(spec, path, split), split, spec)
    if not spec.dirnames:
        raise DataError(f"{spec.name}: a directory is required ({spec.name}:DIR holding train-images-idx3-ubyte[.gz], "
                        "train-labels-idx1-ubyte[.gz], t10k-…)")
    d = _find_idx_dir(spec)
    if d is None:
        looked = ", ".join(map(str, search_dirs(*spec.dirnames)))
        raise DataError(f"{spec.name}: {_idx_names(split)[0]}[.gz] not found; looked in {looked} (set $BITNAS_DATA "
                        f"or use {spec.name}:PATH)")
    return _load_idx_dir(d, split, spec)


def load_mnist(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """MNIST (handwritten digits) from IDX files."""
    return load_idx(MNIST, path, split, image_size)


def load_kmnist(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """Kuzushiji-MNIST (10 cursive hiragana) from IDX files."""
    return load_idx(KMNIST, path, split, image_size)


def load_generic_idx(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """Any dataset in the MNIST IDX layout (idx:DIR): classes 0..max label, statistics of its training images."""
    return load_idx(GENERIC_IDX, path, split, image_size)


def _has_idx(directory: Path, split: str) -> bool:
    return all(_find_file(directory, stem) is not None for stem in _idx_names(split))


def load_fashion_mnist(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """Fashion-MNIST from IDX files; falls back to the embedded subset when no copy is found."""
    if path is not None or _find_idx_dir(FASHION_MNIST) is not None:
        return load_idx(FASHION_MNIST, path, split, image_size)
    no_resize("fashion-mnist", image_size)
    log.warning("fashion-mnist: full copy not found (%s[.gz] looked for in %s); "
                "using the embedded subset %s instead",
                _idx_names(split)[0], ", ".join(map(str, search_dirs("fashion-mnist"))), EMBEDDED_FASHION_MNIST)
    return load_fashion_mnist_embedded(None, split)

