"""Deterministic splits and subsets of a labelled dataset (train/validation, class-balanced subsets).

They read only labels, so they work alike for in-memory datasets and streamed image files.
"""
from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

import numpy as np
import torch

from bitnas.errors import DataError


class Subsettable(Protocol):
    """A labelled dataset that can be cut down by index (in-memory images or streamed files)."""

    labels: torch.Tensor

    def subset(self, indices: torch.Tensor) -> "Subsettable": ...


D = TypeVar("D", bound=Subsettable)


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


def take_subset(ds: D, n: int, seed: int) -> D:
    """A class-balanced subset of `n` samples of `ds` (for --train-subset N), deterministic in `seed`."""
    return ds.subset(balanced_indices(ds.labels, n, seed))  # type: ignore[return-value]

