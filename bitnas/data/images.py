"""Image files from users, decoded with bounds and without silent loss.

- Size: a file's header is read first and an image declaring more than MAX_IMAGE_PIXELS pixels
  (PIL's own decompression-bomb threshold) is refused in one line before any pixel is decoded;
  PIL's DecompressionBombWarning/Error never reach the user.
- Depth: 16-bit grayscale (PNG "I;16", or "I" holding 0..65535) is scaled to 8 bits
  (v·255/65535, rounded), not clipped at 255 as `convert("L")` would; 16-bit colour PNGs are
  already reduced to 8 bits by PIL.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import DataError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS: 0.25 GB as RGB
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _refuse_size(path: Path, pixels: int, wh: tuple[int, int] | None = None) -> DataError:
    shape = f" ({wh[0]}×{wh[1]})" if wh else ""
    return DataError(f"{path}: the image declares {pixels:,} pixels{shape}, more than the {MAX_IMAGE_PIXELS:,} "
                     "bitnas decodes (a decompression bomb, or far larger than any network input); downscale it")


def open_image(path: Path) -> Any:
    """The PIL image of `path` with only its header read, its size checked; DataError otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _refuse_size(path, int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise _refuse_size(path, w * h, (w, h))
    return im


def read_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) of an image file, from its header."""
    with open_image(path) as im:
        return im.mode, im.size


def _to_8bit(im: Any, path: Path) -> Any:
    """`im` with 16-bit gray values scaled to 8 bits (other modes unchanged)."""
    from PIL import Image

    if im.mode not in _SIXTEEN_BIT:
        return im
    arr = np.asarray(im).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{path}: {im.mode} pixels outside 0..65535; save it as an 8- or 16-bit image")
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L")


def load_image(path: Path | str, mode: str) -> Any:
    """The PIL image at `path` fully decoded and converted to `mode` ('L' or 'RGB'; grayscale,
    palette, CMYK, 16-bit gray … are converted), its size checked first; DataError naming the file
    when it cannot be read."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    try:
        with open_image(path) as im:
            im.load()
            im = _to_8bit(im, path)
            return im if im.mode == mode else im.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
