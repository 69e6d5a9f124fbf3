"""Checks shared by the dataset formats and the training split: label ranges, resizing, batch fill."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bitnas.data.imagedata import ImageDataset, ImageSize
from bitnas.errors import DataError

if TYPE_CHECKING:
    from bitnas.data.formats.imagefolder import ImageFiles


def no_resize(name: str, image_size: ImageSize | None) -> None:
    if image_size is not None:
        raise DataError(f"image_size: only imagefolder datasets can be resized, not {name}")



def check_labels(path: Path | str, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} is out of range "
                        f"(expected 0..{num_classes - 1}; {len(bad)} bad labels)")



def check_training_split(ds: "ImageDataset | ImageFiles", batch_size: int, world_size: int, what: str) -> None:
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
