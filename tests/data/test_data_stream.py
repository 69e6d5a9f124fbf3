"""The streaming image-folder loader on a generated folder: same images as decoding by hand, order a
function of (seed, epoch) only, unreadable files reported, exact resume with worker processes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolders import CMYK, CORRUPT, GRAY, write_image_folder
from PIL import Image

from bitnas.data.formats.imagefolder import IMAGE_EXTENSIONS, ImageFiles, describe_files, load_imagefolder_files
from bitnas.data.stats import channel_stats
from bitnas.data.stream import StreamLoader, WorkerOptions
from bitnas.data.transforms import ImageTransform, random_resized_box
from bitnas.errors import DataError

HW = (20, 20)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


def described(root: Path, split: str = "train", class_subset: str = "") -> ImageFiles:
    files = load_imagefolder_files(str(root), split, HW, class_subset)
    mode, mean, std = describe_files(load_imagefolder_files(str(root), "train", HW), skip_bad=True)
    return dataclasses.replace(files, mode=mode, mean=mean, std=std)


def by_hand(root: Path, split: str) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(readable files, uint8 N×3×H×W decoded with PIL here, labels) in listing order."""
    paths, images, labels = [], [], []
    for c, cdir in enumerate(sorted(p for p in (root / split).iterdir() if p.is_dir())):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS or f.name == CORRUPT:
                continue
            with Image.open(f) as im:
                rgb = im.convert("RGB").resize((HW[1], HW[0]), Image.Resampling.BILINEAR)
            paths.append(f)
            images.append(np.asarray(rgb).transpose(2, 0, 1))
            labels.append(c)
    return paths, np.stack(images), np.array(labels)


def collect(loader: StreamLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_images_and_labels_equal_decoding_by_hand(folder: Path, workers: int) -> None:
    files = described(folder)
    paths, images, labels = by_hand(folder, "train")
    assert any(p.name == GRAY for p in paths) and any(p.name == CMYK for p in paths)
    assert len(files) == len(paths) + 1  # the corrupt file is listed, not read
    assert files.mode == "RGB" and (files.mean, files.std) == channel_stats(images)
    loader = StreamLoader(files, 16, shuffle=False, seed=0, transform=ImageTransform(HW, "RGB"),
                          workers=WorkerOptions(workers), bad_images="skip")
    x, y = collect(loader)
    mean = torch.tensor(files.mean).view(1, -1, 1, 1)
    std = torch.tensor(files.std).view(1, -1, 1, 1)
    expected = torch.from_numpy(images).float().mul_(1.0 / (255.0 * std)).sub_(mean / std)
    assert torch.equal(x, expected)
    assert torch.equal(y, torch.from_numpy(labels))
    assert loader.skipped == 1


def test_unreadable_file_stops_with_its_path(folder: Path) -> None:
    files = described(folder)
    loader = StreamLoader(files, 16, shuffle=False, seed=0, transform=ImageTransform(HW, "RGB"))
    with pytest.raises(DataError, match=f"{CORRUPT}: unreadable image"):
        collect(loader)


def augmenting(files: ImageFiles, workers: int, seed: int = 3) -> StreamLoader:
    tf = ImageTransform(HW, files.mode, rrc_scale=(0.08, 1.0), hflip=True, jitter=0.4, hue=0.1, lighting=0.1)
    return StreamLoader(files, 16, shuffle=True, seed=seed, transform=tf, workers=WorkerOptions(workers),
                        bad_images="skip", drop_last=True)


def test_epoch_order_and_augmentation_depend_only_on_seed_and_epoch(folder: Path) -> None:
    files = described(folder)
    a, b = augmenting(files, 0), augmenting(files, 2)
    assert torch.equal(a.indices(4), b.indices(4)) and not torch.equal(a.indices(4), a.indices(5))
    assert not torch.equal(a.indices(4), augmenting(files, 0, seed=4).indices(4))
    for ld in (a, b):  # b first iterates another epoch: nothing carries over
        ld.set_epoch(0 if ld is b else 1)
        collect(ld)
        ld.set_epoch(1)
    xa, ya = collect(a)
    a.set_epoch(1)
    xa2, _ = collect(a)
    xb, yb = collect(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, xa2)
    a.set_epoch(2)
    assert not torch.equal(collect(a)[0], xa)


def test_resume_mid_epoch_with_workers_continues_bitwise(folder: Path) -> None:
    files = described(folder)
    ref = augmenting(files, 2)
    ref.set_epoch(1)
    full = list(ref)
    first = augmenting(files, 2)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    del it
    assert state["epoch"] == 1 and state["batch"] == 3
    resumed = augmenting(files, 2)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    tail = list(resumed)
    assert len(head) + len(tail) == len(full)
    for (x, y), (xr, yr) in zip(head + tail, full):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    other = augmenting(described(folder, class_subset="2"), 2)
    with pytest.raises(DataError, match="image files changed|num_batches"):
        other.load_state_dict(state)


def test_class_subset_lists_only_those_classes(folder: Path) -> None:
    files = load_imagefolder_files(str(folder), "train", HW, "c1,c3")
    assert files.classes == ("c1", "c3") and set(files.labels.tolist()) == {0, 1}
    assert all(bytes(p).startswith((b"c1/", b"c3/")) for p in files.paths)
    val = load_imagefolder_files(str(folder), "test", HW, "2")
    assert val.classes == ("c0", "c1") and len(val) == 16
    with pytest.raises(DataError, match="class_subset"):
        load_imagefolder_files(str(folder), "train", HW, "c9")


def test_random_resized_box_stays_inside_and_covers_the_scale() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_box(50, 30, rng, (0.08, 1.0))
        assert 0 <= left and left + w <= 50 and 0 <= top and top + h <= 30
        assert w * h >= 0.9 * 0.08 * 1500
