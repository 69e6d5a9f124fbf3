"""Image folders: ROOT/train/<class>/*, ROOT/test/<class>/* (or val/): listing, decoding, in-memory reading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bitnas.data.imagedata import ImageDataset, ImageSize, normalize_size
from bitnas.data.stats import channel_stats
from bitnas.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = {"1", "L", "LA"}


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


def _open_header(path: Path) -> tuple[str, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def _decode(items: list[tuple[Path, int]], mode: str, hw: tuple[int, int]) -> np.ndarray:
    """Decode all images to uint8 N×C×H×W in `mode` ('L' or 'RGB'), resized to `hw`."""
    from PIL import Image, UnidentifiedImageError

    h, w = hw
    out = np.empty((len(items), 1 if mode == "L" else 3, h, w), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: unreadable image ({e})") from None
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out



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
    headers = [_open_header(p) for p, _ in train_items]
    mode = "L" if all(m in _GRAY_MODES for m, _ in headers) else "RGB"
    if image_size is None:
        w, h = headers[0][1]
        hw = (h, w)
    else:
        hw = normalize_size(image_size)
    train_images = _decode(train_items, mode, hw)
    mean, std = channel_stats(train_images)
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
