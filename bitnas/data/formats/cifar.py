"""CIFAR-10/100 in the python-pickle layout, unpickled with only numpy reconstruction allowed."""
from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitnas.data.checks import check_labels, no_resize
from bitnas.data.imagedata import ImageDataset, ImageSize
from bitnas.data.locations import search_dirs
from bitnas.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays (pickle can otherwise run any code)."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise DataError(f"{self.path}: refusing to load pickle global '{module}.{name}' "
                            "(only numpy arrays are allowed)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def safe_pickle_load(path: Path) -> Any:
    """Unpickle `path` allowing only numpy array reconstruction."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except EOFError:
        raise DataError(f"{path}: truncated pickle file") from None
    except Exception as e:  # a corrupt pickle can fail in many ways
        raise DataError(f"{path}: not a valid pickle file ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    dirname: str
    alias_dir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CIFAR10 = _CifarSpec("cifar10", "cifar-10-batches-py", "cifar10",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                      "labels", "label_names", 10, CIFAR10_MEAN, CIFAR10_STD)
_CIFAR100 = _CifarSpec("cifar100", "cifar-100-python", "cifar100", ("train",), ("test",), "meta",
                       "fine_labels", "fine_label_names", 100, CIFAR100_MEAN, CIFAR100_STD)


def _get(d: dict, key: str) -> Any:
    """d[b'key'] (files written by Python 2 / encoding='bytes') or d['key']."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _cifar_dir_ok(d: Path, spec: _CifarSpec, split: str) -> bool:
    files = spec.train_files if split == "train" else spec.test_files
    return d.is_dir() and all((d / f).is_file() for f in files)


def _resolve_cifar_dir(d: Path, spec: _CifarSpec, split: str) -> Path | None:
    """`d` itself or `d/<standard dirname>` if it holds the split's batch files."""
    for cand in (d, d / spec.dirname):
        if _cifar_dir_ok(cand, spec, split):
            return cand
    return None


def _read_cifar_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = safe_pickle_load(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, spec.labels_key)
    if data is None:
        raise DataError(f"{path}: no b'data' entry")
    if labels is None:
        raise DataError(f"{path}: no b'{spec.labels_key}' entry (is this a {spec.name} file?)")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data must be uint8 N×3072, got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: labels are not integers ({e})") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels but {len(data)} images")
    check_labels(path, labels, spec.num_classes)
    return data, labels


def _cifar_classes(d: Path, spec: _CifarSpec) -> tuple[str, ...]:
    meta = d / spec.meta_file
    if meta.is_file():
        m = safe_pickle_load(meta)
        names = _get(m, spec.names_key) if isinstance(m, dict) else None
        if isinstance(names, list) and len(names) == spec.num_classes:
            return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if spec.num_classes == 10:
        return CIFAR10_CLASSES
    return tuple(str(i) for i in range(spec.num_classes))


def _load_cifar(spec: _CifarSpec, path: str | None, split: str) -> ImageDataset:
    files = spec.train_files if split == "train" else spec.test_files
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_dir():
            raise DataError(f"{spec.name}:{path}: directory does not exist")
        d = _resolve_cifar_dir(given, spec, split)
        if d is None:
            base = given / spec.dirname if (given / spec.dirname).is_dir() else given
            missing = next(f for f in files if not (base / f).is_file())
            raise DataError(f"{spec.name}:{path}: {missing} not found in {base}")
    else:
        candidates = search_dirs(spec.dirname, spec.alias_dir)
        for cand in candidates:
            d = _resolve_cifar_dir(cand, spec, split)
            if d is not None:
                break
        else:
            raise DataError(f"{spec.name}: {spec.dirname}/{files[0]} not found; looked in "
                            f"{', '.join(map(str, candidates))} (set $BITNAS_DATA or use "
                            f"{spec.name}:PATH)")
    parts = [_read_cifar_batch(d / f, spec) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(data) == 0:
        raise DataError(f"{d}: empty dataset (0 {split} images)")
    return ImageDataset(
        images=torch.from_numpy(data.reshape(-1, 3, 32, 32)), labels=torch.from_numpy(labels),
        num_classes=spec.num_classes, mean=spec.mean, std=spec.std, name=spec.name,
        source=str(d), classes=_cifar_classes(d, spec),
    )


def load_cifar10(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """CIFAR-10 from the python-pickle directory `cifar-10-batches-py/` (or its parent)."""
    no_resize("cifar10", image_size)
    return _load_cifar(_CIFAR10, path, split)


def load_cifar100(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """CIFAR-100 (fine labels) from the python-pickle directory `cifar-100-python/` (or its parent)."""
    no_resize("cifar100", image_size)
    return _load_cifar(_CIFAR100, path, split)

