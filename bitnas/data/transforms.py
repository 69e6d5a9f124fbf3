"""Per-image transforms of streamed image files, on PIL images (torchvision is not a dependency).

Training: random-resized crop, horizontal flip, colour jitter, AlexNet PCA lighting (the ImageNet
recipes of DARTS, PC-DARTS and ReActNet). Evaluation: resize + centre crop, or the whole image
resized. Every random draw comes from the numpy Generator the caller passes, seeded per sample
from (seed, epoch, sample index), so an image's augmentation never depends on the worker that
decodes it or on what was decoded before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitnas.data.formats.imagefolder import decode_image, to_chw

if TYPE_CHECKING:
    from PIL.Image import Image

# AlexNet's PCA of ImageNet RGB pixels (in [0, 1] units), as used by DARTS' Lighting transform
LIGHTING_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
LIGHTING_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])


def random_resized_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float],
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop covering a random fraction `scale` of the area with a random aspect
    ratio (10 tries as torchvision's RandomResizedCrop, then the largest centred crop in `ratio`)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def centre_box(width: int, height: int, out_hw: tuple[int, int], fraction: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in source pixels of the centre crop that resizing the shorter side
    to side/`fraction` and cropping `out_hw` would take (one resize instead of two)."""
    oh, ow = out_hw
    scale = min(width, height) / (min(oh, ow) / fraction)
    cw, ch = ow * scale, oh * scale
    left, top = (width - cw) / 2, (height - ch) / 2
    return left, top, left + cw, top + ch


def color_jitter(im: "Image", strength: float, hue: float, rng: np.random.Generator) -> "Image":
    """Brightness, contrast and saturation each scaled by a factor in [1-s, 1+s], in random order,
    then the hue shifted by up to ±`hue` of a turn (RGB only)."""
    from PIL import Image, ImageEnhance

    if strength > 0:
        factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        for k in rng.permutation(3):
            if im.mode == "L" and k == 2:
                continue
            im = enhancers[k](im).enhance(float(factors[k]))
    if hue > 0 and im.mode == "RGB":
        shift = int(round(rng.uniform(-hue, hue) * 255))
        h, s, v = im.convert("HSV").split()
        h = Image.fromarray(((np.asarray(h, dtype=np.int16) + shift) % 256).astype(np.uint8), "L")
        im = Image.merge("HSV", (h, s, v)).convert("RGB")
    return im


def lighting_offset(std: float, rng: np.random.Generator) -> np.ndarray:
    """The RGB offset (float32, [0, 1] units) AlexNet-style PCA lighting adds to every pixel of one image."""
    alpha = rng.normal(0.0, std, size=3)
    return (LIGHTING_EIGVEC @ (alpha * LIGHTING_EIGVAL)).astype(np.float32)


@dataclass(frozen=True)
class ImageTransform:
    """How one streamed file becomes a uint8 C×H×W image of size `hw` in `mode`.

    rrc_scale: random-resized crop with this area range (None: no random crop). Without it the
    image is resized whole to `hw` (crop_fraction 0) or its shorter side to side/crop_fraction
    and the centre `hw` taken (0.875: ImageNet's 256 → 224 evaluation).
    """

    hw: tuple[int, int]
    mode: str
    rrc_scale: tuple[float, float] | None = None
    hflip: bool = False
    jitter: float = 0.0
    hue: float = 0.0
    lighting: float = 0.0
    crop_fraction: float = 0.0

    @property
    def random(self) -> bool:
        """True if the transform draws random numbers."""
        return bool(self.rrc_scale or self.hflip or self.jitter or self.hue or self.lighting)

    def __call__(self, path: str, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 C×H×W image, RGB lighting offset or None) of the file at `path`."""
        from PIL import Image

        im = decode_image(path, self.mode)
        h, w = self.hw
        bilinear = Image.Resampling.BILINEAR
        if self.rrc_scale is not None and rng is not None:
            left, top, cw, ch = random_resized_box(im.width, im.height, rng, self.rrc_scale)
            im = im.resize((w, h), bilinear, box=(left, top, left + cw, top + ch))
        elif self.crop_fraction > 0:
            im = im.resize((w, h), bilinear, box=centre_box(im.width, im.height, self.hw, self.crop_fraction))
        elif im.size != (w, h):
            im = im.resize((w, h), bilinear)
        if rng is not None:
            if self.hflip and rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.jitter or self.hue:
                im = color_jitter(im, self.jitter, self.hue, rng)
        lit = self.lighting and rng is not None and self.mode == "RGB"
        offset = lighting_offset(self.lighting, rng) if lit else None
        return to_chw(im), offset
