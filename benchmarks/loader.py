"""Images/second of the streaming image-folder loader against the cost of decoding alone.

Writes `--images` JPEGs of ImageNet's typical size (500×375, quality 90, smooth content plus
noise) into a temporary image folder (or reads `--dir`, an existing imagefolder), then times,
on the same files with a warm page cache:

    decode              PIL open + convert to RGB, in this process (the floor of any loader)
    decode + train tf   + random-resized crop to --size and flip (the ImageNet training transform)
    decode + eval tf    + resize the shorter side to size/0.875 and centre crop
    stream, W workers   `StreamLoader` with the training transform, batch --batch-size, normalised
                        float batches handed to this process (W = 0: decoded in this process)

Loader rows time whole epochs after a first one (workers started, persistent); every contender
runs --repeat times, round robin, and the median is reported; images/s counts every image.
The table is labelled with the CPU model, the cores this process may use and the load average
(the machine may be shared).

    .venv/bin/python benchmarks/loader.py
    .venv/bin/python benchmarks/loader.py --images 1000 --workers 0,1,2 --json
    .venv/bin/python benchmarks/loader.py --dir /data/imagenet --images 2000
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bitnas.common.machine import cpu_model, usable_cores


def cpu_label() -> str:
    """CPU model, usable cores and 1-minute load average of this machine."""
    model, cores = cpu_model(), usable_cores()
    return f"{model}, {cores} usable core(s), load average {os.getloadavg()[0]:.2f}"


def write_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """`n` 500×375 JPEGs in root/train/<class>/ (smooth gradients plus noise: realistic file sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        d = root / "train" / f"class{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(-1, 1, 3)
        base = 128 + 60 * np.sin(a * xx / 40 + b * yy / 30 + c)[..., None] * rng.uniform(0.5, 1, 3)
        img = np.clip(base + rng.normal(0, 12, (375, 500, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)


def timed(n: int, fn: Callable[[], Any]) -> float:
    """Images/second of one call of `fn()` processing `n` images."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def measure(folder: Path, limit: int, size: int, batch_size: int, workers: list[int],
            repeat: int) -> list[dict[str, Any]]:
    """Every contender timed `repeat` times, round robin (load from other jobs hits all alike); medians."""
    from bitnas.data.formats.imagefolder import decode_image, describe_files, load_imagefolder_files
    from bitnas.data.splits import take_subset
    from bitnas.data.stream import StreamLoader, WorkerOptions
    from bitnas.data.transforms import ImageTransform

    files = load_imagefolder_files(str(folder), "train", size)
    if len(files) > limit:
        files = take_subset(files, limit, 0)
    mode, mean, std = describe_files(files, skip_bad=True, sample=64)
    files = dataclasses.replace(files, mode=mode, mean=mean, std=std)
    paths = [files.path(i) for i in range(len(files))]
    n = len(paths)
    for p in paths:  # warm the page cache
        Path(p).read_bytes()
    train_tf = ImageTransform((size, size), mode, rrc_scale=(0.08, 1.0), hflip=True)
    eval_tf = ImageTransform((size, size), mode, crop_fraction=0.875)
    rng = np.random.default_rng(0)
    contenders: dict[str, tuple[int, Callable[[], Any]]] = {
        "decode": (n, lambda: [decode_image(p, mode) for p in paths]),
        f"decode + train tf ({size} px)": (n, lambda: [train_tf(p, rng) for p in paths]),
        f"decode + eval tf ({size} px)": (n, lambda: [eval_tf(p, None) for p in paths]),
    }
    loaders = []
    for w in workers:
        loader = StreamLoader(files, batch_size, shuffle=True, seed=0, transform=train_tf,
                              workers=WorkerOptions(num_workers=w), bad_images="skip", drop_last=True)
        for _ in loader:  # first epoch: starts the (persistent) workers
            pass
        loaders.append(loader)
        contenders[f"stream, {w} worker{'s' if w != 1 else ''}"] = (len(loader) * batch_size,
                                                                    lambda ld=loader: [None for _ in ld])
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, (count, fn) in contenders.items():
            rates[name].append(timed(count, fn))
    for loader in loaders:
        loader.close()
    rows = [{"what": name, "images_per_second": statistics.median(r)} for name, r in rates.items()]
    for r in rows:
        r["vs_decode"] = r["images_per_second"] / rows[0]["images_per_second"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512, help="images timed (generated, or taken from --dir)")
    p.add_argument("--dir", default="", help="an existing imagefolder (ROOT/train/<class>/*) instead of generated JPEGs")
    p.add_argument("--size", type=int, default=224, help="output side in pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--repeat", type=int, default=3, help="timed passes per contender (median reported)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="bitnas-loader-") as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp)
        if not args.dir:
            write_jpegs(folder, args.images)
        rows = measure(folder, args.images, args.size, args.batch_size, workers, args.repeat)
    label = cpu_label()
    if args.json:
        print(json.dumps({"cpu": label, "images": args.images, "size": args.size, "rows": rows}))
        return
    print(f"CPU: {label}")
    print(f"{args.images} JPEGs {'from ' + args.dir if args.dir else '500×375 generated'}, {args.size} px, "
          f"batch {args.batch_size}, median of {args.repeat} passes")
    print(f"{'':<28} {'images/s':>9} {'vs decode':>10}")
    for r in rows:
        print(f"{r['what']:<28} {r['images_per_second']:9.1f} {r['vs_decode']:9.2f}x")


if __name__ == "__main__":
    main()
