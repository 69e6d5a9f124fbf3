"""Image-folder loading with pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitnas.data import load_dataset
from bitnas.errors import DataError


def _save(path: Path, arr: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _folder(root: Path, gray: bool = False, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """train/{cat,dog} with 3+2 images and test/{cat,dog} with 1+1, all 8×6 PNGs."""
    rng = np.random.default_rng(seed)
    shape = (8, 6) if gray else (8, 6, 3)
    out: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    for split, counts in (("train", {"dog": 2, "cat": 3}), ("test", {"cat": 1, "dog": 1})):
        for cls in sorted(counts):
            for i in range(counts[cls]):
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                _save(root / split / cls / f"img{i}.png", arr)
                out[split].append((cls, arr))
    return out


def _chw(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@pytest.mark.parametrize("gray", [False, True])
def test_imagefolder_roundtrip(tmp_path: Path, gray: bool) -> None:
    written = _folder(tmp_path, gray=gray)
    for split in ("train", "test"):
        ds = load_dataset(f"imagefolder:{tmp_path}", split)
        assert ds.classes == ("cat", "dog") and ds.num_classes == 2
        assert ds.images.shape == (len(written[split]), 1 if gray else 3, 8, 6)
        for i, (cls, arr) in enumerate(written[split]):
            assert np.array_equal(ds.images[i].numpy(), _chw(arr))
            assert int(ds.labels[i]) == ds.classes.index(cls)
    train = np.stack([_chw(a) for _, a in written["train"]]).astype(np.float64) / 255
    ds_test = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert np.allclose(ds_test.mean, train.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(ds_test.std, train.std(axis=(0, 2, 3)), atol=1e-4)


def test_val_dir_is_test_split(tmp_path: Path) -> None:
    _folder(tmp_path)
    (tmp_path / "test").rename(tmp_path / "val")
    assert len(load_dataset(f"imagefolder:{tmp_path}", "test")) == 2


def test_mixed_modes_and_sizes(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((10, 12), np.uint8))
    _save(tmp_path / "train" / "b" / "1.png", np.full((20, 20, 3), 200, np.uint8))
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert ds.images.shape == (2, 3, 10, 12)
    assert int(ds.images[1].min()) == 200
    ds = load_dataset(f"imagefolder:{tmp_path}", "train", image_size=4)
    assert ds.images.shape == (2, 3, 4, 4)
    ds = load_dataset(f"imagefolder:{tmp_path}", "train", image_size=(5, 7))
    assert ds.images.shape == (2, 3, 5, 7)


def test_no_train_subdir_means_train_only(tmp_path: Path) -> None:
    _save(tmp_path / "x" / "0.jpg", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "y" / "0.bmp", np.zeros((4, 4, 3), np.uint8))
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert ds.classes == ("x", "y") and len(ds) == 2
    with pytest.raises(DataError, match=r"no train/ subfolder, so the whole folder is the train split "
                                        r"and there is no test split"):
        load_dataset(f"imagefolder:{tmp_path}", "test")


def test_unreadable_image(tmp_path: Path) -> None:
    _folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        load_dataset(f"imagefolder:{tmp_path}", "train")


def test_truncated_image(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "0.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3),
                                                                              dtype=np.uint8))
    f = tmp_path / "train" / "a" / "0.png"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match=r"0\.png: unreadable image"):
        load_dataset(f"imagefolder:{tmp_path}", "train")


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"imagefolder: a PATH is required"):
        load_dataset("imagefolder", "train")
    with pytest.raises(DataError, match=r"directory does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", "train")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/a: empty class folder"):
        load_dataset(f"imagefolder:{tmp_path}", "train")
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"train/b: empty class folder"):  # one empty class among full ones
        load_dataset(f"imagefolder:{tmp_path}", "train")
    (tmp_path / "train" / "b").rmdir()
    with pytest.raises(DataError, match=r"no test/ or val/ subfolder"):
        load_dataset(f"imagefolder:{tmp_path}", "test")
    _save(tmp_path / "test" / "zebra" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"zebra: class 'zebra' does not exist in .*train"):
        load_dataset(f"imagefolder:{tmp_path}", "test")
    with pytest.raises(DataError, match=r"image_size: must be a positive int"):
        load_dataset(f"imagefolder:{tmp_path}", "train", image_size=0)


def test_sixteen_bit_gray_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit PNG holds 0..65535: it becomes 8 bits as v·255/65535 (convert("L") would clip 99.6 %
    of this ramp to 255), and an image folder of such files is gray."""
    ramp = np.linspace(0, 65535, 6 * 8).astype(np.uint16).reshape(6, 8)
    for split in ("train", "test"):
        for c in ("a", "b"):
            p = tmp_path / split / c / "x.png"
            p.parent.mkdir(parents=True)
            Image.fromarray(ramp).save(p)
    assert Image.open(tmp_path / "train/a/x.png").mode.startswith("I")
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    want = ((ramp.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert ds.images.shape == (2, 1, 6, 8)
    assert np.array_equal(ds.images[0, 0].numpy(), want) and want.max() == 255 and len(np.unique(want)) > 40


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    """PIL's bomb check (a DecompressionBombError above 2×89M pixels, a warning above 89M) and bitnas'
    own bound give the same one-line DataError; nothing is decoded."""
    from bitnas.data.images import MAX_IMAGE_PIXELS, read_header

    from tests.test_bad_inputs import png_header

    for w, h in ((60000, 60000), (10000, 9000), (9500, 9500)):
        path = png_header(tmp_path, f"{w}.png", w, h)
        with pytest.raises(DataError, match=f"declares {w * h:,} pixels"):
            read_header(path)
    assert read_header(png_header(tmp_path, "ok.png", 9000, 9000))[1] == (9000, 9000)
    assert 9000 * 9000 < MAX_IMAGE_PIXELS < 9500 * 9500
