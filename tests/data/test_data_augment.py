"""Batched augmentation properties."""
from __future__ import annotations

import torch

from bitnas.data import Augment
from bitnas.data.augment import cutout, normalize, random_crop, random_hflip


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 16, c: int = 3, h: int = 9, w: int = 7) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=_gen(42)) + 0.1


def test_crop_padding_zero_is_identity() -> None:
    x = _images()
    assert torch.equal(random_crop(x, 0, _gen()), x)


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = _images(n=32)
    p = 2
    out = random_crop(x, p, _gen())
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    _, _, h, w = x.shape
    offsets = set()
    for i in range(len(x)):
        match = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert len(match) == 1
        offsets.add(match[0])
    assert len(offsets) > 5
    assert torch.equal(random_crop(x, p, _gen(7)), random_crop(x, p, _gen(7)))


def test_hflip_twice_with_same_generator_state_is_identity() -> None:
    x = _images()
    once = random_hflip(x, _gen(3))
    assert torch.equal(random_hflip(once, _gen(3)), x)
    flipped = (once != x).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < len(x)
    assert torch.equal(once[flipped], x[flipped].flip(3))
    assert torch.equal(random_hflip(x, _gen(), p=1.0), x.flip(3))


def test_cutout_zeroes_one_clipped_square() -> None:
    x = torch.ones(200, 2, 32, 32)
    length = 8
    out = cutout(x, length, _gen())
    interior = 0
    for i in range(len(out)):
        assert torch.equal(out[i, 0], out[i, 1])
        zero = out[i, 0] == 0
        rows = torch.nonzero(zero.any(1)).flatten()
        cols = torch.nonzero(zero.any(0)).flatten()
        assert len(rows) > 0
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert int(zero.sum()) == (r1 - r0) * (c1 - c0)
        assert (r1 - r0) <= length and (c1 - c0) <= length
        if r0 > 0 and c0 > 0 and r1 < 32 and c1 < 32:
            interior += 1
            assert int(zero.sum()) == length * length
        else:
            assert int(zero.sum()) <= length * length
    assert interior > 50


def test_normalize() -> None:
    x = torch.full((2, 2, 3, 3), 0.5)
    y = normalize(x, (0.5, 0.25), (0.5, 0.125))
    assert torch.allclose(y[:, 0], torch.zeros(2, 3, 3)) and torch.allclose(y[:, 1], torch.full((2, 3, 3), 2.0))


def test_augment_deterministic_and_shape_preserving() -> None:
    x = _images(n=8, c=1, h=28, w=28)
    aug = Augment(crop_padding=4, hflip=True, cutout=8)
    a = aug(x, _gen(5), (0.3,), (0.2,))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, aug(x, _gen(5), (0.3,), (0.2,)))
    assert torch.equal(Augment()(x, _gen()), x)
    assert (a == 0).any()


def test_augment_uint8_input_matches_float_input() -> None:
    x = torch.randint(0, 256, (8, 3, 12, 12), generator=_gen(1), dtype=torch.uint8)
    aug = Augment(crop_padding=3, hflip=True, cutout=5)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    a = aug(x, _gen(9), mean, std)
    b = aug(x.float() / 255, _gen(9), mean, std)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-5)
