"""The data of a training run: its splits, and the loaders that turn them into batches.

Small datasets are decoded into memory once (`BatchLoader`: fastest to iterate). Image folders
stream (`StreamLoader`: decoded per batch by `num_workers` worker processes, memory bounded by
the batch and the workers) when `stream=on`, or with `stream=auto` (the default) when their
decoded training images would exceed STREAM_AUTO_BYTES or a streaming-only option is set
(random_resized_crop, color_jitter, hue_jitter, lighting, eval_crop, class_subset).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from bitnas.common.distributed import DistInfo
from bitnas.data import Augment, BatchLoader, ImageDataset, check_training_split, load_dataset, take_subset
from bitnas.data.datasets import DATASETS
from bitnas.data.formats.imagefolder import ImageFiles, describe_files, load_imagefolder_files
from bitnas.data.splits import train_val_split
from bitnas.data.stream import StreamLoader, WorkerOptions
from bitnas.data.transforms import ImageTransform
from bitnas.errors import ConfigError, DataError
from bitnas.train.config import TrainConfig

log = logging.getLogger("bitnas")

STREAM_AUTO_BYTES = 2 << 30  # stream=auto: image folders whose decoded training images exceed 2 GiB stream
STREAM_ONLY = ("random_resized_crop", "color_jitter", "hue_jitter", "lighting", "eval_crop", "class_subset")

Split = ImageDataset | ImageFiles
Loader = BatchLoader | StreamLoader


@dataclass(frozen=True)
class StreamSettings:
    """How streamed files become batches: per-image transforms, workers, unreadable-file policy."""

    train: ImageTransform
    eval: ImageTransform
    workers: WorkerOptions
    bad_images: str


@dataclass
class TrainData:
    """The splits of one run plus what the network needs to know about them."""

    train: Split
    val: Split | None
    test: Split
    stream: StreamSettings | None = None  # None: the splits are in memory

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return self.train.input_shape[0]

    @property
    def image_size(self) -> int:
        return self.train.input_shape[1]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape

    def train_loader(self, cfg: TrainConfig, info: DistInfo) -> Loader:
        """This rank's shuffled, augmented training batches (exactly resumable)."""
        ds = self.train
        drop_last = -(-len(ds) // info.world_size) >= cfg.batch_size
        common = dict(shuffle=True, seed=cfg.seed, drop_last=drop_last, rank=info.rank, world_size=info.world_size)
        if self.stream is None:
            assert isinstance(ds, ImageDataset)
            augment = Augment(crop_padding=cfg.crop_padding, hflip=cfg.hflip, cutout=cfg.cutout)
            return BatchLoader(ds, cfg.batch_size, augment=augment, **common)
        assert isinstance(ds, ImageFiles)
        augment = Augment(crop_padding=cfg.crop_padding, cutout=cfg.cutout)  # the flip is per image
        return StreamLoader(ds, cfg.batch_size, transform=self.stream.train, augment=augment,
                            workers=self.stream.workers, bad_images=self.stream.bad_images, device=info.device,
                            **common)

    def eval_loader(self, ds: Split, batch_size: int, info: DistInfo) -> Loader | None:
        """This rank's contiguous share of `ds` (no padding, so summed counts are exact); None if empty."""
        n = len(ds)
        per = -(-n // info.world_size)
        lo, hi = min(n, info.rank * per), min(n, (info.rank + 1) * per)
        if hi <= lo:
            return None
        part = ds.subset(torch.arange(lo, hi))
        if self.stream is None:
            assert isinstance(part, ImageDataset)
            return BatchLoader(part, batch_size, shuffle=False, seed=0)
        assert isinstance(part, ImageFiles)
        workers = dataclasses.replace(self.stream.workers, persistent_workers=False)  # started per evaluation
        return StreamLoader(part, batch_size, shuffle=False, seed=0, transform=self.stream.eval,
                            workers=workers, bad_images=self.stream.bad_images, device=info.device)


def load_train_data(cfg: TrainConfig, world_size: int = 1,
                    load: Callable[..., ImageDataset] = load_dataset) -> TrainData:
    """Train (optionally a class-balanced subset, minus a stratified validation split) and test;
    refused when the training images cannot fill one batch per process or miss a class. `load`
    reads an in-memory split (a study's checks pass a cached one)."""
    files = _stream_files(cfg)
    if files is not None:
        data = _streamed(cfg, *files)
    else:
        data = _in_memory(cfg, load)
    data.train, data.val = hold_out_validation(cfg, data.train)
    what = f"train_subset {cfg.train_subset}" if cfg.train_subset else f"data {cfg.data}"
    check_training_split(data.train, cfg.batch_size, world_size, what)
    return data


def hold_out_validation(cfg: TrainConfig, train: Split) -> tuple[Split, Split | None]:
    """(train, validation): the stratified, seeded `val_fraction` of the training images held out
    (None when 0); works on in-memory datasets and streamed file listings alike."""
    if cfg.val_fraction <= 0:
        return train, None
    tr_idx, val_idx = train_val_split(train.labels, cfg.val_fraction, cfg.seed, stratified=True)
    if len(val_idx) == 0 or len(tr_idx) == 0:
        raise DataError(f"val_fraction {cfg.val_fraction}: leaves an empty train or validation split "
                        f"of the {len(train)} training images")
    return train.subset(tr_idx), train.subset(val_idx)


def split_training_images(cfg: TrainConfig, train: ImageDataset) -> tuple[ImageDataset, ImageDataset | None]:
    """(train, validation) of in-memory training images as a run makes them: the class-balanced
    `train_subset` if set, then the held-out validation split."""
    if cfg.train_subset:
        train = take_subset(train, cfg.train_subset, cfg.seed)
    return hold_out_validation(cfg, train)


def _in_memory(cfg: TrainConfig, load: Callable[..., ImageDataset] = load_dataset) -> TrainData:
    set_only = [k for k in STREAM_ONLY if getattr(cfg, k)]
    if set_only:
        raise ConfigError(f"{set_only[0]}: applies to streamed image folders only (data imagefolder:DIR with "
                          f"stream auto or on; this run reads {cfg.data} into memory)")
    size = cfg.image_size or None
    kw = {"image_size": size} if size else {}
    train = load(cfg.data, "train", **kw)
    test = load(cfg.data, "test", **kw)
    if train.input_shape != test.input_shape or train.num_classes != test.num_classes:
        raise DataError(f"{cfg.data}: train and test splits differ in shape or classes "
                        f"({train.input_shape}/{train.num_classes} vs {test.input_shape}/{test.num_classes})")
    if cfg.train_subset:
        train = take_subset(train, cfg.train_subset, cfg.seed)
    if cfg.test_subset:
        test = take_subset(test, cfg.test_subset, cfg.seed)
    return TrainData(train=train, val=None, test=test)


def _stream_files(cfg: TrainConfig) -> tuple[ImageFiles, ImageFiles] | None:
    """The listed (train, test) files when this run streams, else None (read into memory)."""
    name, _, path = cfg.data.partition(":")
    folder = name.strip() in DATASETS and DATASETS.canonical(name.strip()) == "imagefolder"
    if not folder:
        if cfg.stream == "on":
            raise ConfigError(f"stream on: only image folders stream (data is {cfg.data})")
        return None
    if cfg.stream == "off":
        return None
    size = cfg.image_size or None
    train = load_imagefolder_files(path or None, "train", size, cfg.class_subset)
    if cfg.stream == "auto" and not any(getattr(cfg, k) for k in STREAM_ONLY):
        decoded = len(train) * 3 * train.hw[0] * train.hw[1]
        if decoded <= STREAM_AUTO_BYTES:
            return None
        log.info("data: streaming %d training images (%.1f GiB decoded; stream=auto streams above %.0f GiB)",
                 len(train), decoded / 2 ** 30, STREAM_AUTO_BYTES / 2 ** 30)
    test = load_imagefolder_files(path or None, "test", train.hw, cfg.class_subset)
    return train, test


def _streamed(cfg: TrainConfig, train: ImageFiles, test: ImageFiles) -> TrainData:
    """Subsets (labels only: skipped files are never opened), then the mode and statistics from a
    sample of the training files finally used, then the per-image transforms."""
    if cfg.train_subset:
        train = take_subset(train, cfg.train_subset, cfg.seed)
    if cfg.test_subset:
        test = take_subset(test, cfg.test_subset, cfg.seed)
    mode, mean, std = describe_files(train, skip_bad=cfg.bad_images == "skip")
    train = dataclasses.replace(train, mode=mode, mean=mean, std=std)
    test = dataclasses.replace(test, mode=mode, mean=mean, std=std)
    rrc = (cfg.random_resized_crop, 1.0) if cfg.random_resized_crop else None
    settings = StreamSettings(
        train=ImageTransform(train.hw, mode, rrc_scale=rrc, hflip=cfg.hflip, jitter=cfg.color_jitter,
                             hue=cfg.hue_jitter, lighting=cfg.lighting, crop_fraction=cfg.eval_crop),
        eval=ImageTransform(train.hw, mode, crop_fraction=cfg.eval_crop),
        workers=WorkerOptions(cfg.num_workers, cfg.prefetch_factor, cfg.persistent_workers, cfg.pin_memory),
        bad_images=cfg.bad_images)
    return TrainData(train=train, val=None, test=test, stream=settings)


def checkpoint_test_loader(data: str, ck: dict, batch_size: int, device: torch.device) -> StreamLoader | None:
    """The test split of `data` streamed as the checkpoint's training streamed it (its classes,
    statistics, evaluation crop and workers), for `bitnas eval`; None when that run read its
    data into memory (or `data` is no image folder)."""
    saved, block, loader = ck.get("config"), ck.get("data"), ck.get("loader")
    name, _, path = data.partition(":")
    if not (isinstance(saved, dict) and isinstance(block, dict) and isinstance(loader, dict) and "files" in loader):
        return None
    if name.strip() not in DATASETS or DATASETS.canonical(name.strip()) != "imagefolder":
        return None
    side = int(ck.get("image_size") or 0)
    classes = [str(c) for c in block.get("classes") or []]
    test = load_imagefolder_files(path or None, "test", side or None, ",".join(classes))
    if test.classes != tuple(classes):
        raise DataError(f"{data}: classes {list(test.classes)[:5]}… differ from the checkpoint's training classes")
    mode = "L" if int(block.get("in_channels") or 3) == 1 else "RGB"
    test = dataclasses.replace(test, mode=mode, mean=tuple(block["mean"]), std=tuple(block["std"]))
    workers = WorkerOptions(int(saved.get("num_workers") or 0), int(saved.get("prefetch_factor") or 2),
                            persistent_workers=False)
    transform = ImageTransform(test.hw, mode, crop_fraction=float(saved.get("eval_crop") or 0.0))
    return StreamLoader(test, batch_size, shuffle=False, seed=0, transform=transform, workers=workers,
                        bad_images=str(saved.get("bad_images") or "stop"), device=device)
