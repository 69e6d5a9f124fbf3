"""Normalisation statistics of uint8 images."""
from __future__ import annotations

import numpy as np


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
