"""In-memory image datasets: Fashion-MNIST (IDX), CIFAR-10/100 (python pickles), image folders.

Every loader returns an `ImageDataset` holding uint8 images (N×C×H×W) and int64 labels.
Bad input of any kind (missing, truncated or inconsistent files) raises `DataError` with a
one-line message naming the file or option and the problem.
"""
from __future__ import annotations

import gzip
import importlib
import logging
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

import bitnas
from bitnas.data.images import GRAY_MODES, decode_image, read_header
from bitnas.errors import DataError
from bitnas.registry import Registry

log = logging.getLogger("bitnas")

ImageSize = int | tuple[int, int]
DatasetLoader = Callable[[str | None, str, ImageSize | None], "ImageDataset"]

DATASETS: Registry[DatasetLoader] = Registry("dataset")

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_FASHION_MNIST = EMBEDDED_DIR / "fashion_mnist_subset.npz"

# Default places searched for datasets (besides $BITNAS_DATA and ../shared/datasets from the cwd);
# module attributes so tests can point them elsewhere.
REPO_SHARED_DATASETS = Path(bitnas.__file__).resolve().parents[2] / "shared" / "datasets"
SYSTEM_DATASETS = Path("/usr/share/datasets")

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

SPLITS = ("train", "test")


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory as uint8 N×C×H×W images and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    source: str
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.source}: images must be a uint8 N×C×H×W tensor, "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(f"{self.source}: labels must be an int64 vector, "
                            f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"{self.source}: mean/std need {channels} values, "
                            f"got {len(self.mean)}/{len(self.std)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> "ImageDataset":
        """A new dataset with the samples at `indices` (same statistics and metadata)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            images=self.images[idx], labels=self.labels[idx], num_classes=self.num_classes,
            mean=self.mean, std=self.std, name=self.name, source=self.source, classes=self.classes,
        )


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


def _no_resize(name: str, image_size: ImageSize | None) -> None:
    if image_size is not None:
        raise DataError(f"image_size: only imagefolder datasets can be resized, not {name}")


def _search_dirs(*subdirs: str) -> list[Path]:
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


# ---------------------------------------------------------------- IDX (Fashion-MNIST)

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
            mean, std = _channel_stats(train_images[:, None])
    _check_labels(lab_path, labels, len(classes))
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
    for d in _search_dirs(*spec.dirnames):
        if d.is_dir() and any(_find_file(d, stem) for stem in all_stems):
            return d
    return None


def load_idx(spec: IdxSpec, path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """An IDX dataset from NAME:PATH or its default locations ($BITNAS_DATA, ../shared/datasets, …)."""
    _no_resize(spec.name, image_size)
    if path is not None:
        return _load_idx_dir(_idx_dir(spec, path, split), split, spec)
    if not spec.dirnames:
        raise DataError(f"{spec.name}: a directory is required ({spec.name}:DIR holding train-images-idx3-ubyte[.gz], "
                        "train-labels-idx1-ubyte[.gz], t10k-…)")
    d = _find_idx_dir(spec)
    if d is None:
        looked = ", ".join(map(str, _search_dirs(*spec.dirnames)))
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


def _check_labels(path: Path | str, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} is out of range "
                        f"(expected 0..{num_classes - 1}; {len(bad)} bad labels)")


def _has_idx(directory: Path, split: str) -> bool:
    return all(_find_file(directory, stem) is not None for stem in _idx_names(split))


def load_fashion_mnist(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """Fashion-MNIST from IDX files; falls back to the embedded subset when no copy is found."""
    if path is not None or _find_idx_dir(FASHION_MNIST) is not None:
        return load_idx(FASHION_MNIST, path, split, image_size)
    _no_resize("fashion-mnist", image_size)
    log.warning("fashion-mnist: full copy not found (%s[.gz] looked for in %s); "
                "using the embedded subset %s instead",
                _idx_names(split)[0], ", ".join(map(str, _search_dirs("fashion-mnist"))), EMBEDDED_FASHION_MNIST)
    return load_fashion_mnist_embedded(None, split)


def load_fashion_mnist_embedded(path: str | None, split: str,
                                image_size: ImageSize | None = None) -> ImageDataset:
    """The class-balanced Fashion-MNIST subset shipped with bitnas (see data/embedded/README.md)."""
    _no_resize("fashion-mnist-embedded", image_size)
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
    _check_labels(f, labels, 10)
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1), labels=torch.from_numpy(labels),
        num_classes=10, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
        name="fashion-mnist-embedded", source=str(f), classes=FASHION_MNIST_CLASSES,
    )


# ---------------------------------------------------------------- CIFAR (python pickles)

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
    _check_labels(path, labels, spec.num_classes)
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
        candidates = _search_dirs(spec.dirname, spec.alias_dir)
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
    _no_resize("cifar10", image_size)
    return _load_cifar(_CIFAR10, path, split)


def load_cifar100(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """CIFAR-100 (fine labels) from the python-pickle directory `cifar-100-python/` (or its parent)."""
    _no_resize("cifar100", image_size)
    return _load_cifar(_CIFAR100, path, split)


# ---------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _class_dirs(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _list_images(d: Path, classes: list[str], where: str) -> list[tuple[Path, int]]:
    known = {c: i for i, c in enumerate(classes)}
    items: list[tuple[Path, int]] = []
    for cdir in _class_dirs(d):
        if cdir.name not in known:
            raise DataError(f"{cdir}: class '{cdir.name}' does not exist in {where}")
        files = _image_files(cdir)
        if not files:
            raise DataError(f"{cdir}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images); "
                            "add images or remove the folder")
        items += [(f, known[cdir.name]) for f in files]
    if not items:
        raise DataError(f"{d}: empty dataset (no {'/'.join(IMAGE_EXTENSIONS)} images in class subfolders)")
    return items


def _decode(items: list[tuple[Path, int]], mode: str, hw: tuple[int, int]) -> np.ndarray:
    """Decode all images to uint8 N×C×H×W in `mode` ('L' or 'RGB'), resized to `hw` (bounded and
    16-bit aware: `bitnas.data.images`)."""
    h, w = hw
    out = np.empty((len(items), 1 if mode == "L" else 3, h, w), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        out[i] = decode_image(path, mode, hw)
    return out


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×C×H×W images, in [0, 1] units."""
    c = images.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096].astype(np.float64) / 255.0
        s += chunk.sum(axis=(0, 2, 3))
        ss += (chunk * chunk).sum(axis=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(round(m, 4)) for m in mean), tuple(float(round(v, 4)) for v in std)


def _normalize_size(image_size: ImageSize) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise DataError(f"image_size: must be a positive int or (height, width), got {image_size!r}")
    return hw  # type: ignore[return-value]


def load_imagefolder(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """Images in PATH/train/<class>/* and PATH/test/<class>/* (or PATH/val/...).

    Without a train/ subfolder the whole PATH is the train split and there is no test split.
    Classes are sorted by name; images become L if all train images are grayscale, else RGB,
    and are resized to `image_size` (default: the size of the first train image).
    Normalisation statistics are computed on the train split.
    """
    if path is None:
        raise DataError("imagefolder: a PATH is required (imagefolder:PATH)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder:{path}: directory does not exist")
    train_dir = root / "train"
    if not train_dir.is_dir():
        if split == "test":
            raise DataError(f"imagefolder:{path}: no train/ subfolder, so the whole folder is the train "
                            "split and there is no test split (use PATH/train and PATH/test or PATH/val)")
        train_dir = root
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        raise DataError(f"{train_dir}: no class subfolders (expected {train_dir}/<class>/*.png)")
    train_items = _list_images(train_dir, classes, str(train_dir))
    headers = [read_header(p) for p, _ in train_items]
    mode = "L" if all(m in GRAY_MODES for m, _ in headers) else "RGB"
    if image_size is None:
        w, h = headers[0][1]
        hw = (h, w)
    else:
        hw = _normalize_size(image_size)
    train_images = _decode(train_items, mode, hw)
    mean, std = _channel_stats(train_images)
    if split == "train":
        images, items, src = train_images, train_items, train_dir
    else:
        src = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        if src is None:
            raise DataError(f"imagefolder:{path}: no test/ or val/ subfolder for the test split")
        items = _list_images(src, classes, str(train_dir))
        images = _decode(items, mode, hw)
    labels = np.array([c for _, c in items], dtype=np.int64)
    return ImageDataset(
        images=torch.from_numpy(images), labels=torch.from_numpy(labels), num_classes=len(classes),
        mean=mean, std=std, name="imagefolder", source=str(src), classes=tuple(classes),
    )


DATASETS.register("fashion-mnist", load_fashion_mnist, aliases=("fashion_mnist", "fmnist"))
DATASETS.register("fashion-mnist-embedded", load_fashion_mnist_embedded,
                  aliases=("fashion_mnist_embedded", "fmnist-embedded"))
DATASETS.register("mnist", load_mnist)
DATASETS.register("kmnist", load_kmnist, aliases=("k-mnist", "kuzushiji-mnist"))
DATASETS.register("idx", load_generic_idx)
DATASETS.register("cifar10", load_cifar10, aliases=("cifar-10",))
DATASETS.register("cifar100", load_cifar100, aliases=("cifar-100",))
DATASETS.register("imagefolder", load_imagefolder, aliases=("image-folder",))


# ---------------------------------------------------------------- splits and subsets

def _labels_tensor(labels: torch.Tensor | Sequence[int] | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long).reshape(-1)


def train_val_split(labels: torch.Tensor | Sequence[int] | np.ndarray | int, val_fraction: float,
                    seed: int, stratified: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into (train, val), both sorted, deterministically from `seed`.

    `labels` is the label vector (or just the sample count, which implies stratified=False).
    Stratified splits hold out the same fraction of every class; the val size is always
    round(n * val_fraction).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    if isinstance(labels, int):
        n, stratified, lab = labels, False, None
    else:
        lab = _labels_tensor(labels)
        n = len(lab)
    n_val = int(round(n * val_fraction))
    if not stratified or lab is None:
        perm = torch.randperm(n, generator=gen)
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    classes, counts = torch.unique(lab, return_counts=True)
    quotas = counts.double() * val_fraction
    take = quotas.floor().long()
    short = n_val - int(take.sum())
    if short > 0:
        frac = quotas - take.double()
        order = sorted(range(len(classes)), key=lambda i: (-float(frac[i]), i))
        for i in order[:short]:
            take[i] += 1
    val_parts, train_parts = [], []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(lab == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val_parts.append(idx[:k])
        train_parts.append(idx[k:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def balanced_indices(labels: torch.Tensor | Sequence[int] | np.ndarray, n: int, seed: int) -> torch.Tensor:
    """`n` sorted indices spread as evenly as possible over the classes, deterministic in `seed`."""
    lab = _labels_tensor(labels)
    if n <= 0:
        raise DataError(f"train subset: size must be positive, got {n}")
    if n > len(lab):
        raise DataError(f"train subset: {n} samples requested but the dataset has only {len(lab)}")
    classes, counts = torch.unique(lab, return_counts=True)
    k = len(classes)
    take = [0] * k
    remaining = n
    for rank, i in enumerate(sorted(range(k), key=lambda i: (int(counts[i]), i))):
        take[i] = min(int(counts[i]), remaining // (k - rank))
        remaining -= take[i]
    for i in range(k):
        extra = min(remaining, int(counts[i]) - take[i])
        take[i] += extra
        remaining -= extra
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for c, t in zip(classes.tolist(), take):
        idx = torch.nonzero(lab == c).flatten()
        parts.append(idx[torch.randperm(len(idx), generator=gen)[:t]])
    return torch.cat(parts).sort().values


def take_subset(ds: ImageDataset, n: int, seed: int) -> ImageDataset:
    """A class-balanced subset of `n` samples of `ds` (for --train-subset N), deterministic in `seed`."""
    return ds.subset(balanced_indices(ds.labels, n, seed))


def check_training_split(ds: ImageDataset, batch_size: int, world_size: int, what: str) -> None:
    """Refuse a training split that cannot fill one batch per process or lacks some class.

    `what` names the setting that made the split (e.g. "train_subset 5")."""
    per_rank = -(-len(ds) // world_size)
    if per_rank < batch_size:
        where = f" per process ({world_size} processes)" if world_size > 1 else ""
        raise DataError(f"{what}: {len(ds)} training images{where} cannot fill one batch of {batch_size}; "
                        "use a smaller batch_size or more images")
    counts = torch.bincount(ds.labels, minlength=ds.num_classes)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        names = [ds.classes[i] if i < len(ds.classes) else str(i) for i in missing]
        shown = ", ".join(map(repr, names[:10])) + (" …" if len(names) > 10 else "")
        raise DataError(f"{what}: the {len(ds)} training images hold no image of {len(missing)} of the "
                        f"{ds.num_classes} classes ({shown}); use more images")
