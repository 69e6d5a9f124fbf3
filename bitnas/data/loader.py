"""Fast in-memory batch iteration with DistributedSampler-style sharding and exact resume.

Batch `i` of epoch `e` on rank `r` is a pure function of (seed, e, r, i): the epoch's
permutation depends on (seed, e) only and each batch's augmentation on its own generator
seeded from (seed, e, r, i). A run restored from `state_dict()` therefore sees exactly the
batches it would have seen without the interruption.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from bitnas.data.augment import Augment
from bitnas.data.imagedata import ImageDataset
from bitnas.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (order matters)."""
    words = np.random.SeedSequence([p % (1 << 64) for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & ((1 << 63) - 1)


def epoch_indices(n: int, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Rank `rank`'s sample indices of `epoch`, in batch order: a pure function of its arguments.

    The epoch's permutation depends on (seed, epoch) only; each rank takes every world_size-th
    index, padded by wrapping around so every rank gets ceil(n / world_size) (as torch's
    DistributedSampler). Shared by the in-memory and the streaming loaders."""
    if shuffle:
        gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    total = -(-n // world_size) * world_size
    if total > n:
        order = torch.cat([order, order.repeat(-(-(total - n) // n))[: total - n]])
    return order[rank:total:world_size]


def check_loader(n: int, source: str, batch_size: int, rank: int, world_size: int) -> None:
    """Refuse what no loader can serve: a batch size below 1, a rank outside the world, no images."""
    if batch_size < 1:
        raise DataError(f"batch_size: must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if n == 0:
        raise DataError(f"{source}: empty dataset")


def check_resume(state: dict[str, Any], mine: dict[str, Any], what: dict[str, str] | None = None) -> None:
    """Refuse a loader `state_dict()` saved with other settings than `mine` ({key: this run's value});
    `what` words a key's mismatch where "KEY=saved but this run has KEY=mine" would not say it."""
    for key, value in mine.items():
        if key in state and state[key] != value:
            why = (what or {}).get(key) or f"{key}={state[key]} but this run has {key}={value}"
            raise DataError(f"loader state: saved with {why}; exact resume needs the same data settings")


def batch_count(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches per rank and epoch of `n` samples (DataError when drop_last leaves none)."""
    per_rank = -(-n // world_size)
    count = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
    if count == 0:
        raise DataError(f"batch_size: {batch_size} is larger than the {per_rank} samples "
                        f"per rank and drop_last drops them all")
    return count


class BatchLoader:
    """Iterate over (x, y) batches of an in-memory ImageDataset.

    x is float32 N×C×H×W normalised with the dataset's mean/std (augmented first if `augment`
    is given), y is int64. With `world_size` > 1 each rank takes every world_size-th index of
    the epoch's permutation, padded by wrapping around so all ranks get the same number of
    batches (like torch's DistributedSampler).

    Position tracking: iterating records how many batches of the current epoch were handed out.
    `set_epoch(e)` with a new epoch starts it from batch 0; with the current epoch it keeps the
    position, so after `load_state_dict` the usual `set_epoch(epoch); for b in loader` loop
    resumes mid-epoch. Iterating a finished epoch again replays it from the start.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int,
                 augment: Augment | None = None, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        check_loader(len(dataset), dataset.source, batch_size, rank, world_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment if augment is not None and augment.active else None
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.num_samples = -(-len(dataset) // world_size)
        self.num_batches = batch_count(len(dataset), batch_size, world_size, drop_last)
        self.epoch = 0
        self.position = 0
        self._indices_epoch: int | None = None
        self._indices = torch.empty(0, dtype=torch.long)
        std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
        mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation are used (position kept if unchanged)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for `epoch` (default: the current one), in batch order."""
        epoch = self.epoch if epoch is None else epoch
        if self._indices_epoch == epoch:
            return self._indices
        idx = epoch_indices(len(self.dataset), self.shuffle, self.seed, epoch, self.rank, self.world_size)
        self._indices_epoch, self._indices = epoch, idx
        return idx

    def batch(self, index: int, epoch: int | None = None) -> Batch:
        """Batch number `index` of `epoch` (default: the current one); does not move the position."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
        epoch = self.epoch if epoch is None else epoch
        idx = self.indices(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        raw = self.dataset.images[idx]
        y = self.dataset.labels[idx]
        if self.augment is None:
            return raw.float().mul_(self._scale).sub_(self._shift), y
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank, index))
        x = self.augment(raw, gen, self.dataset.mean, self.dataset.std)
        return x.contiguous(), y

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        """Batches `batch_index`, …, len-1 of the current epoch, without moving the position."""
        epoch = self.epoch
        for i in range(batch_index, self.num_batches):
            yield self.batch(i, epoch)

    def __iter__(self) -> Iterator[Batch]:
        start = self.position if self.position < self.num_batches else 0
        epoch = self.epoch
        for i in range(start, self.num_batches):
            b = self.batch(i, epoch)
            self.position = i + 1
            yield b

    def state_dict(self) -> dict[str, Any]:
        """(epoch, batches of it already handed out) plus what must match on resume."""
        return {"epoch": self.epoch, "batch": self.position, "seed": self.seed,
                "num_batches": self.num_batches, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; the loader must be configured as when it was saved."""
        check_resume(state, {"seed": self.seed, "num_batches": self.num_batches, "world_size": self.world_size})
        self.epoch = int(state["epoch"])
        self.position = int(state["batch"])


class InfiniteLoader:
    """Cycles a BatchLoader's epochs forever (epoch e, e+1, …), with exact resume.

    The InfiniteLoader owns the wrapped loader's position; don't iterate that loader elsewhere.
    """

    def __init__(self, loader: BatchLoader) -> None:
        self.loader = loader

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self) -> Batch:
        ld = self.loader
        if ld.position >= len(ld):
            ld.set_epoch(ld.epoch + 1)
        b = ld.batch(ld.position)
        ld.position += 1
        return b

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
