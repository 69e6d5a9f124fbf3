"""Streaming batches of image files, decoded per batch by `torch.utils.data` workers, with exact resume.

The same contract as the in-memory `BatchLoader`: batch `i` of epoch `e` on rank `r` is a pure
function of (seed, e, r, i). The epoch's order comes from `epoch_indices` (seed, epoch); each
image's random crop/flip/jitter/lighting from a generator seeded with (seed, epoch, sample index),
never from a worker's RNG; batch-level tensor augmentation (crop padding, cutout) from
(seed, epoch, rank, batch) as in memory. Workers only decode: they return uint8 images, and
normalisation happens here (on the GPU when training there). `state_dict()` holds the epoch and
the number of batches handed out, so a run stopped mid-epoch continues where it stopped, with any
number of workers.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bitnas.data.augment import Augment
from bitnas.data.formats.imagefolder import ImageFiles
from bitnas.data.loader import Batch, batch_count, check_loader, check_resume, epoch_indices, mix_seed
from bitnas.data.transforms import ImageTransform
from bitnas.errors import DataError

log = logging.getLogger("bitnas")

SAMPLE_STREAM = 0x1A6E  # separates per-sample seeds from the other uses of mix_seed
BAD_IMAGES = ("stop", "skip")


@dataclass(frozen=True)
class WorkerOptions:
    """How batches are decoded: in this process (num_workers 0) or in worker processes."""

    num_workers: int = 0
    prefetch_factor: int = 2
    persistent_workers: bool = True
    pin_memory: bool = True  # used on CUDA only


class Normaliser:
    """uint8 images (plus per-image lighting offsets) → float (x/255 + offset - mean) / std, on their device.

    Without offsets it computes exactly what `BatchLoader` does, so the two paths agree bitwise."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = self.mean / self.std

    def __call__(self, raw: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        dev = raw.device
        if offsets is None:
            return raw.float().mul_(self.scale.to(dev)).sub_(self.shift.to(dev))
        x = raw.float().div_(255.0).add_(offsets.to(dev)[:, :, None, None])
        return x.sub_(self.mean.to(dev)).div_(self.std.to(dev))


class FileBatches(Dataset):
    """Decodes a batch of (epoch, sample index) keys; runs in a worker process (or in this one).

    With a `normaliser` (training on the CPU) the workers also normalise, in parallel; without
    (on a GPU, or when batch augmentation follows) they return uint8 images, 4× less to move."""

    def __init__(self, files: ImageFiles, transform: ImageTransform, seed: int,
                 normaliser: Normaliser | None = None) -> None:
        self.files, self.transform, self.seed, self.normaliser = files, transform, seed, normaliser

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list[tuple[int, int]]) -> dict[str, Any]:
        """{"images": uint8 B×C×H×W, "labels", "offsets": B×3 lighting or None, "bad": [messages]};
        unreadable files are left out and reported in "bad"."""
        images, labels, offsets, bad = [], [], [], []
        for epoch, i in keys:
            rng = np.random.default_rng(mix_seed(self.seed, epoch, i, SAMPLE_STREAM)) if self.transform.random else None
            try:
                img, off = self.transform(self.files.path(i), rng)
            except DataError as e:
                bad.append(str(e))
                continue
            images.append(img)
            labels.append(int(self.files.labels[i]))
            offsets.append(off)
        c, (h, w) = self.files.input_shape[0], self.transform.hw
        raw = torch.from_numpy(np.stack(images)) if images else torch.empty(0, c, h, w, dtype=torch.uint8)
        off = torch.from_numpy(np.stack(offsets)) if offsets and offsets[0] is not None else None
        out: dict[str, Any] = {"labels": torch.tensor(labels, dtype=torch.int64), "bad": bad}
        if self.normaliser is not None:
            out["x"] = self.normaliser(raw, off)
        else:
            out["images"], out["offsets"] = raw, off
        return out


def _own_process_group(worker_id: int) -> None:
    """worker_init_fn: leave the training process's group, so that Ctrl-C or a SIGTERM sent to the
    group reach only the training process, which checkpoints and then ends its workers (a worker
    dying first would fail the next batch). A SIGTERM to the worker itself still ends it, as
    multiprocessing's clean-up at exit needs; workers also end when the training process dies."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _as_is(batch: Any) -> Any:
    """collate_fn: FileBatches already returns whole batches."""
    return batch


class _Keys:
    """The batch sampler: the keys of batches start, …, end-1 of one epoch, made lazily."""

    def __init__(self) -> None:
        self.epoch, self.indices, self.batch_size, self.start, self.end = 0, np.empty(0, np.int64), 1, 0, 0

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        bs = self.batch_size
        for b in range(self.start, self.end):
            yield [(self.epoch, int(i)) for i in self.indices[b * bs:(b + 1) * bs]]


class StreamLoader:
    """Iterate over normalised (x, y) batches of image files; same interface as `BatchLoader`.

    bad_images: "stop" raises DataError naming the first unreadable file; "skip" leaves it out of
    its batch, logs it with its path and counts it (`skipped`, this epoch).
    """

    def __init__(self, files: ImageFiles, batch_size: int, shuffle: bool, seed: int, transform: ImageTransform,
                 augment: Augment | None = None, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 workers: WorkerOptions = WorkerOptions(), bad_images: str = "stop",
                 device: torch.device | None = None) -> None:
        check_loader(len(files), files.source, batch_size, rank, world_size)
        if bad_images not in BAD_IMAGES:
            raise DataError(f"bad_images: must be one of {', '.join(BAD_IMAGES)}, got '{bad_images}'")
        self.files, self.batch_size, self.shuffle, self.seed = files, batch_size, shuffle, seed
        self.augment = augment if augment is not None and augment.active else None
        self.rank, self.world_size, self.workers, self.bad_images = rank, world_size, workers, bad_images
        self.device = device or torch.device("cpu")
        self.num_batches = batch_count(len(files), batch_size, world_size, drop_last)
        self.epoch, self.position, self.skipped = 0, 0, 0
        self._normalise = Normaliser(files.mean, files.std)
        in_workers = self.augment is None and self.device.type == "cpu"
        self._source = FileBatches(files, transform, seed, self._normalise if in_workers else None)
        self._keys = _Keys()
        self._keys.batch_size = batch_size
        self._loader: DataLoader | None = None
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation are used (position kept if unchanged)."""
        if epoch != self.epoch:
            self.epoch, self.position, self.skipped = epoch, 0, 0

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for `epoch` (default: the current one), in batch order."""
        epoch = self.epoch if epoch is None else epoch
        return epoch_indices(len(self.files), self.shuffle, self.seed, epoch, self.rank, self.world_size)

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            w = self.workers
            extra: dict[str, Any] = {}
            if w.num_workers > 0:
                extra = {"prefetch_factor": w.prefetch_factor, "persistent_workers": w.persistent_workers,
                         "worker_init_fn": _own_process_group}
            # its own generator: a DataLoader draws a worker base seed at every iteration, which must
            # not advance the global RNG (drop path) or a resumed run would diverge
            self._loader = DataLoader(self._source, batch_sampler=self._keys, num_workers=w.num_workers,
                                      collate_fn=_as_is, pin_memory=w.pin_memory and self.device.type == "cuda",
                                      generator=torch.Generator(), **extra)
        return self._loader

    def __iter__(self) -> Iterator[Batch]:
        start = self.position if self.position < self.num_batches else 0
        if start == 0:
            self.skipped = 0
        epoch = self.epoch
        keys = self._keys
        keys.epoch, keys.indices = epoch, self.indices(epoch).numpy()
        keys.start, keys.end = start, self.num_batches
        for i, out in enumerate(self._dataloader(), start):
            x, y = self._finish(out, epoch, i)
            self.position = i + 1
            yield x, y

    def _finish(self, out: dict[str, Any], epoch: int, index: int) -> Batch:
        """Report unreadable files, then normalise (and augment) the uint8 batch."""
        for message in out["bad"]:
            if self.bad_images == "stop":
                raise DataError(f"{message} (bad_images=skip leaves such files out)")
            self.skipped += 1
            if message not in self._warned:
                self._warned.add(message)
                log.warning("%s: skipped (bad_images=skip)", message)
        y = out["labels"]
        if len(y) == 0:
            raise DataError(f"{self.files.source}: every image of batch {index} of epoch {epoch + 1} is unreadable")
        if "x" in out:  # normalised by the worker
            return out["x"].to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        raw, offsets = out["images"], out["offsets"]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank, index))
            x = raw if offsets is None else raw.float().div_(255.0).add_(offsets[:, :, None, None])
            x = self.augment(x, gen, self.files.mean, self.files.std).contiguous()
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        raw = raw.to(self.device, non_blocking=True)
        return self._normalise(raw, offsets), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop persistent worker processes (they also end with the loader)."""
        self._loader = None

    def state_dict(self) -> dict[str, Any]:
        """(epoch, batches of it handed out, files skipped) plus what must match on resume."""
        return {"epoch": self.epoch, "batch": self.position, "seed": self.seed, "num_batches": self.num_batches,
                "world_size": self.world_size, "files": self.files.files_digest(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; the loader must be configured as when it was saved."""
        check_resume(state, {"seed": self.seed, "num_batches": self.num_batches, "world_size": self.world_size,
                             "files": self.files.files_digest()}, {"files": "other image files"})
        self.epoch = int(state["epoch"])
        self.position = int(state["batch"])
        self.skipped = int(state.get("skipped", 0))
