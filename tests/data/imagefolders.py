"""Write image folders in the on-disk shape users have (ROOT/train/<class>/*, ROOT/val/<class>/*) with Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CORRUPT = "corrupt.jpg"
GRAY = "gray.png"
CMYK = "cmyk.jpg"


def write_image_folder(root: Path, classes: int = 4, per_class: int = 50, val_per_class: int = 8,
                       seed: int = 0, size: tuple[int, int] = (24, 56), odd_files: bool = True) -> Path:
    """JPEG and PNG RGB images of random sizes in `size` (a class-dependent tint, so classes are
    learnable); with `odd_files`, class c0 of train/ also holds a corrupt file, a grayscale PNG and a CMYK JPEG."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            tint = np.array([(c * 67) % 256, (c * 131) % 256, (c * 29) % 256])
            for i in range(n):
                h, w = (int(v) for v in rng.integers(size[0], size[1], 2))
                noise = rng.integers(0, 128, (h, w, 3))
                img = Image.fromarray(((noise + tint) % 256).astype(np.uint8), "RGB")
                if i % 2:
                    img.save(d / f"{i:05d}.jpg", quality=90)
                else:
                    img.save(d / f"{i:05d}.png")
    if odd_files:
        c0 = root / "train" / "c0"
        (c0 / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), "L").save(c0 / GRAY)
        Image.fromarray(rng.integers(0, 256, (33, 27, 4), dtype=np.uint8), "CMYK").save(c0 / CMYK)
    return root
