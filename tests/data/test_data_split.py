"""Deterministic train/val splits and class-balanced subsets."""
from __future__ import annotations

import pytest
import torch

from bitnas.data import ImageDataset, take_subset, train_val_split
from bitnas.errors import DataError


def _labels() -> torch.Tensor:
    """107 labels in 4 unbalanced classes (50/30/20/7), shuffled."""
    counts = [50, 30, 20, 7]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


def _dataset(labels: torch.Tensor) -> ImageDataset:
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageDataset(images, labels.long(), int(labels.max()) + 1, (0.5,), (0.25,), "toy", "memory")


def test_split_is_a_deterministic_partition() -> None:
    labels = _labels()
    tr, va = train_val_split(labels, 0.2, seed=3)
    tr2, va2 = train_val_split(labels, 0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(len(labels)))
    assert len(va) == round(0.2 * len(labels))
    tr3, va3 = train_val_split(labels, 0.2, seed=4)
    assert not torch.equal(va, va3)


def test_split_is_stratified() -> None:
    labels = _labels()
    _, va = train_val_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[va], minlength=4).tolist() == [10, 6, 4, 1]
    _, va = train_val_split(labels, 0.5, seed=0)
    counts = torch.bincount(labels[va], minlength=4).tolist()
    assert counts[:3] == [25, 15, 10] and counts[3] in (3, 4) and sum(counts) == round(0.5 * 107)


def test_unstratified_split_from_count() -> None:
    tr, va = train_val_split(100, 0.25, seed=0)
    assert len(va) == 25 and len(tr) == 75
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(100))
    tr2, va2 = train_val_split(_labels(), 0.25, seed=0, stratified=False)
    assert len(va2) == round(0.25 * 107)


def test_split_bad_fraction() -> None:
    with pytest.raises(DataError, match=r"val_fraction: must be in \[0, 1\), got 1.5"):
        train_val_split(10, 1.5, seed=0)


def test_take_subset_is_balanced_and_deterministic() -> None:
    ds = _dataset(_labels())
    sub = take_subset(ds, 40, seed=0)
    assert len(sub) == 40
    assert torch.bincount(sub.labels, minlength=4).tolist() == [11, 11, 11, 7]
    sub2 = take_subset(ds, 40, seed=0)
    assert torch.equal(sub.images, sub2.images) and torch.equal(sub.labels, sub2.labels)
    assert torch.bincount(take_subset(ds, 20, seed=5).labels, minlength=4).tolist() == [5, 5, 5, 5]
    idx = sub.images[:, 0, 0, 0].long()
    assert torch.equal(ds.labels[idx], sub.labels)
    assert not torch.equal(take_subset(ds, 20, seed=5).images, take_subset(ds, 20, seed=6).images)


def test_take_subset_bad_sizes() -> None:
    ds = _dataset(_labels())
    with pytest.raises(DataError, match=r"train subset: 500 samples requested but the dataset has only 107"):
        take_subset(ds, 500, seed=0)
    with pytest.raises(DataError, match=r"train subset: size must be positive"):
        take_subset(ds, 0, seed=0)
