"""Batched, vectorised image augmentation on N×C×H×W tensors driven by an explicit torch.Generator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` on each side, then crop back to H×W at a random offset per sample."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # N×C×(2p+1)×(2p+1)×H×W view, no copy
    return windows[torch.arange(n), :, oy, ox]


def random_hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability `p`."""
    flip = torch.rand(x.shape[0], generator=gen) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one length×length square per sample, centred uniformly anywhere, clipped at the borders.

    Same geometry as DARTS' Cutout: rows [cy - length//2, cy + length//2) clipped to [0, H).
    """
    if length <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=gen)
    cx = torch.randint(0, w, (n, 1), generator=gen)
    half = length // 2
    r = torch.arange(h)
    q = torch.arange(w)
    in_rows = (r >= cy - half) & (r < cy + half)
    in_cols = (q >= cx - half) & (q < cx + half)
    hole = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return x.masked_fill(hole, 0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel; x is float in [0, 1]."""
    m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass
class Augment:
    """Training augmentation: random crop with zero padding, horizontal flip, cutout.

    Called on uint8 images (0..255) or float images in [0, 1]. Given `mean`/`std`, the batch
    is converted to float and normalised after the flip and before cutout, so that (as in
    DARTS) padding is black and the cutout hole is the mean colour; the result is normalised.
    """

    crop_padding: int = 0
    hflip: bool = False
    cutout: int = 0

    def __call__(self, x: torch.Tensor, gen: torch.Generator, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, gen)
        if self.hflip:
            x = random_hflip(x, gen)
        if mean is not None and std is not None:
            x = normalize(x.float().div_(255.0) if x.dtype == torch.uint8 else x, mean, std)
        if self.cutout:
            x = cutout(x, self.cutout, gen)
        return x

    @property
    def active(self) -> bool:
        """True if any augmentation is enabled."""
        return bool(self.crop_padding or self.hflip or self.cutout)
