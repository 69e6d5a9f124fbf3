"""ImageDataset: a labelled image dataset held in memory (uint8 N×C×H×W images, int64 labels)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from bitnas.errors import DataError

ImageSize = int | tuple[int, int]


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



def normalize_size(image_size: ImageSize) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise DataError(f"image_size: must be a positive int or (height, width), got {image_size!r}")
    return hw  # type: ignore[return-value]

