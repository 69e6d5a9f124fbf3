"""Image folders: ROOT/train/<class>/*, ROOT/test/<class>/* (or val/).

Two readers side by side over one listing and one decoder (`decode_image`):
`load_imagefolder` decodes every image into memory (small datasets: fastest to iterate);
`load_imagefolder_files` only lists the files (`ImageFiles`), which `data/stream.py` decodes
per batch in worker processes (large datasets: memory bounded by the batch and the workers).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from bitnas.data.imagedata import ImageDataset, ImageSize, normalize_size
from bitnas.data.images import GRAY_MODES, load_image, read_header
from bitnas.data.stats import channel_stats
from bitnas.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
STATS_SAMPLE = 1024  # training images decoded to estimate the streamed statistics and colour mode


def _class_dirs(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _list_images(d: Path, classes: list[str], where: str, subset: bool = False) -> list[tuple[Path, int]]:
    """(file, label) of every image under d/<class>/; with `subset`, folders of other classes are
    ignored (never listed) instead of refused."""
    known = {c: i for i, c in enumerate(classes)}
    items: list[tuple[Path, int]] = []
    for cdir in _class_dirs(d):
        if cdir.name not in known:
            if subset:
                continue
            raise DataError(f"{cdir}: class '{cdir.name}' does not exist in {where}")
        files = _image_files(cdir)
        if not files:
            raise DataError(f"{cdir}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images); "
                            "add images or remove the folder")
        items += [(f, known[cdir.name]) for f in files]
    if not items:
        raise DataError(f"{d}: empty dataset (no {'/'.join(IMAGE_EXTENSIONS)} images in class subfolders)")
    return items


def decode_image(path: Path | str, mode: str) -> "Image":
    """The image at `path` fully decoded and converted to `mode` ('L' or 'RGB'), with the bounds and
    the 16-bit scaling of `bitnas.data.images`; DataError naming the file when it cannot be read.

    The one place image files are decoded (training in memory, streaming workers, `bitnas infer`)."""
    return load_image(path, mode)


def to_chw(im: "Image") -> np.ndarray:
    """uint8 C×H×W array of a decoded L or RGB image."""
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_resized(path: Path | str, mode: str, hw: tuple[int, int]) -> np.ndarray:
    """uint8 C×H×W of the image at `path` in `mode`, the whole image resized (bilinear) to `hw`."""
    from PIL import Image

    h, w = hw
    im = decode_image(path, mode)
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    return to_chw(im)


def _decode(items: list[tuple[Path, int]], mode: str, hw: tuple[int, int]) -> np.ndarray:
    """Decode all images to uint8 N×C×H×W in `mode` ('L' or 'RGB'), resized to `hw`."""
    h, w = hw
    out = np.empty((len(items), 1 if mode == "L" else 3, h, w), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        out[i] = decode_resized(path, mode, hw)
    return out


def _split_dirs(path: str | None, split: str) -> tuple[Path, Path]:
    """(train folder, folder of `split`) of imagefolder:PATH."""
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
    if split == "train":
        return train_dir, train_dir
    src = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if src is None:
        raise DataError(f"imagefolder:{path}: no test/ or val/ subfolder for the test split")
    return train_dir, src


def _classes(train_dir: Path) -> list[str]:
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        raise DataError(f"{train_dir}: no class subfolders (expected {train_dir}/<class>/*.png)")
    return classes


def load_imagefolder(path: str | None, split: str, image_size: ImageSize | None = None) -> ImageDataset:
    """Images in PATH/train/<class>/* and PATH/test/<class>/* (or PATH/val/...), decoded into memory.

    Without a train/ subfolder the whole PATH is the train split and there is no test split.
    Classes are sorted by name; images become L if all train images are grayscale, else RGB,
    and are resized to `image_size` (default: the size of the first train image).
    Normalisation statistics are computed on the train split.
    """
    train_dir, src = _split_dirs(path, split)
    classes = _classes(train_dir)
    train_items = _list_images(train_dir, classes, str(train_dir))
    headers = [read_header(p) for p, _ in train_items]
    mode = "L" if all(m in GRAY_MODES for m, _ in headers) else "RGB"
    if image_size is None:
        w, h = headers[0][1]
        hw = (h, w)
    else:
        hw = normalize_size(image_size)
    train_images = _decode(train_items, mode, hw)
    mean, std = channel_stats(train_images)
    if split == "train":
        images, items = train_images, train_items
    else:
        items = _list_images(src, classes, str(train_dir))
        images = _decode(items, mode, hw)
    labels = np.array([c for _, c in items], dtype=np.int64)
    return ImageDataset(
        images=torch.from_numpy(images), labels=torch.from_numpy(labels), num_classes=len(classes),
        mean=mean, std=std, name="imagefolder", source=str(src), classes=tuple(classes),
    )


# ---------------------------------------------------------------- streamed: the listing only

@dataclass
class ImageFiles:
    """The image files of one split, listed but not decoded: the streamed counterpart of ImageDataset.

    Paths are kept relative to `root` in one numpy bytes array (compact, and shared by forked
    workers without copy-on-access). `mode`, `hw`, `mean`, `std` describe the decoded images; the
    mode and statistics are estimated on a sample of training images (`describe_files`).
    """

    root: str
    paths: np.ndarray
    labels: torch.Tensor
    classes: tuple[str, ...]
    hw: tuple[int, int]
    mode: str = "RGB"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    name: str = "imagefolder"
    source: str = ""
    digest: str = field(default="")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one decoded image."""
        return (1 if self.mode == "L" else 3), self.hw[0], self.hw[1]

    def path(self, i: int) -> str:
        """Full path of file `i`."""
        return os.path.join(self.root, os.fsdecode(bytes(self.paths[i])))

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> "ImageFiles":
        """The files at `indices` (same description); nothing is read."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, paths=self.paths[idx.numpy()], labels=self.labels[idx], digest="")

    def files_digest(self) -> str:
        """SHA-256 of the listing (paths and labels): a resume refuses a changed dataset."""
        if not self.digest:
            h = hashlib.sha256(self.root.encode())
            h.update(self.paths.tobytes())
            h.update(self.labels.numpy().tobytes())
            self.digest = h.hexdigest()
        return self.digest


def parse_class_subset(text: str, classes: list[str]) -> list[str]:
    """The classes kept by class_subset: '' (all), N (the first N by name) or NAME,NAME,…"""
    text = text.strip()
    if not text:
        return classes
    if text.isdigit():
        n = int(text)
        if not 1 <= n <= len(classes):
            raise DataError(f"class_subset: {n} classes requested but the training folder has {len(classes)}")
        return classes[:n]
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise DataError(f"class_subset: no training folder for class(es) {', '.join(map(repr, unknown[:5]))}")
    return sorted(set(names), key=classes.index)


def load_imagefolder_files(path: str | None, split: str, image_size: ImageSize | None = None,
                           class_subset: str = "") -> ImageFiles:
    """The files of `split` of imagefolder:PATH (only the classes of `class_subset`), undecoded.

    Mode and statistics are left for `describe_files`, which reads a sample of the training
    files finally used (after subsets), so skipped files are never opened."""
    train_dir, src = _split_dirs(path, split)
    all_classes = _classes(train_dir)
    classes = parse_class_subset(class_subset, all_classes)
    subset = len(classes) < len(all_classes)
    items = _list_images(src, classes, str(train_dir), subset=subset)
    if image_size is None:
        first = items[0][0] if split == "train" else _list_images(train_dir, classes, str(train_dir), subset)[0][0]
        w, h = read_header(first)[1]
        hw = (h, w)
    else:
        hw = normalize_size(image_size)
    rel = np.array([os.fsencode(os.path.relpath(p, src)) for p, _ in items], dtype=np.bytes_)
    labels = torch.tensor([c for _, c in items], dtype=torch.int64)
    return ImageFiles(root=str(src), paths=rel, labels=labels, classes=tuple(classes), hw=hw, source=str(src))


def describe_files(files: ImageFiles, skip_bad: bool, sample: int = STATS_SAMPLE) -> tuple[str, tuple[float, ...],
                                                                                             tuple[float, ...]]:
    """(mode, mean, std) estimated on up to `sample` files spread evenly over `files` (all of them
    when fewer: then equal to what the in-memory reader computes). Mode is L when every sampled
    image is grayscale. Unreadable sampled files are skipped (skip_bad) or refused."""
    n = len(files)
    picks = np.unique(np.linspace(0, n - 1, num=min(n, sample)).round().astype(np.int64))
    modes: list[str] = []
    paths: list[str] = []
    for i in picks:
        p = files.path(int(i))
        try:
            modes.append(read_header(Path(p))[0])
            paths.append(p)
        except DataError:
            if not skip_bad:
                raise
    if not paths:
        raise DataError(f"{files.source}: none of the {len(picks)} sampled images is readable")
    mode = "L" if all(m in GRAY_MODES for m in modes) else "RGB"
    arrays = []
    for p in paths:
        try:
            arrays.append(decode_resized(p, mode, files.hw))
        except DataError:
            if not skip_bad:
                raise
    mean, std = channel_stats(np.stack(arrays))
    return mode, mean, std
