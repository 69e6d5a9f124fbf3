"""Randomised shapes through every ISA row, against numpy and the plain reference row.

The AVX-512 dense core reads activations in place (from the input, or from a framed copy with the
border laid out) in blocks of 6 output pixels and runs the output transform per block; these
shapes exercise what that path decides per call: blocks straddling image rows and images, tails
shorter than a block, output channels not multiples of 8, 16 or 32, words split across groups,
strides, dilations, uneven and zero padding, +1 padding, explicit (larger and smaller) output
sizes and negative padding (the fallback path), batch 1 and > 1, one and several threads.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitnas.deploy import engine
from tests.deploy.test_engine_kernels import isa, needs_engine, np_conv, np_epilogue, np_pack  # noqa: F401


def random_case(seed: int) -> dict:
    """One random conv: sizes drawn so that every branch above comes up within a few dozen seeds."""
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 1, 1, 2, 4]))
    cin_g = int(rng.choice([1, 5, 33, 64, 65, 100, 128, 130]))
    cout_g = int(rng.choice([1, 7, 8, 9, 16, 17, 31, 33, 40, 64, 70]))
    kh, kw = (int(v) for v in rng.choice([1, 2, 3, 5], size=2))
    sh, sw = (int(v) for v in rng.choice([1, 1, 2], size=2))
    dh, dw = (int(v) for v in rng.choice([1, 1, 2], size=2))
    pt, pl = int(rng.integers(-1, kh)), int(rng.integers(-1, kw))
    h, w = int(rng.integers(max(1, (kh - 1) * dh + 1 - 2 * max(pt, 0)), 13)), int(rng.integers(max(1, (kw - 1) * dw + 1 - 2 * max(pl, 0)), 13))
    oh = max(1, engine.conv_out_size(h, kh, sh, max(pt, 0), dh) + int(rng.integers(-1, 2)))
    ow = max(1, engine.conv_out_size(w, kw, sw, max(pl, 0), dw) + int(rng.integers(-1, 2)))
    return dict(n=int(rng.choice([1, 2, 3])), cin=cin_g * groups, cout=cout_g * groups, groups=groups, h=h, w=w,
                k=(kh, kw), s=(sh, sw), d=(dh, dw), p=(pt, pl), out=(oh, ow), pad_value=int(rng.integers(0, 2)),
                threads=int(rng.choice([1, 1, 3])), seed=seed)


def build(c: dict):
    rng = np.random.default_rng(c["seed"] + 1000)
    x = np.where(rng.random((c["n"], c["cin"], c["h"], c["w"])) < 0.5, -1, 1)
    wt = np.where(rng.random((c["cout"], c["cin"] // c["groups"], *c["k"])) < 0.5, -1, 1)
    conv = engine.BinaryConv(wt < 0, c["cin"], stride=c["s"], padding=c["p"], dilation=c["d"], groups=c["groups"],
                             pad_value=c["pad_value"])
    return x, wt, conv, np_pack(x.transpose(0, 2, 3, 1) < 0)


@needs_engine
@pytest.mark.parametrize("seed", range(40))
def test_random_shapes_give_numpy_integers(seed: int, isa: str) -> None:  # noqa: F811
    c = random_case(seed)
    x, wt, conv, bits = build(c)
    want = np_conv(x, wt, c["s"], c["p"], c["d"], c["groups"], c["pad_value"], c["out"])
    got = conv(bits, c["out"], want=("ints",), isa=isa, threads=c["threads"])["ints"]
    assert np.array_equal(got, want), f"{c}: {np.abs(got - want).max()} off"


@needs_engine
@pytest.mark.parametrize("seed", range(40, 56))
def test_random_shapes_give_numpy_floats_and_bits(seed: int, isa: str) -> None:  # noqa: F811
    """Floats (with a residual, an activation and an addend), the next layer's bits and the integers
    in one call, and threshold bits in another, each equal to numpy's."""
    c = random_case(seed)
    x, wt, conv, bits = build(c)
    dot = np_conv(x, wt, c["s"], c["p"], c["d"], c["groups"], c["pad_value"], c["out"])
    rng = np.random.default_rng(seed)
    o = c["cout"]
    mul, add, slope, bs, bt = (rng.standard_normal(o).astype(np.float32) for _ in range(5))
    act = ("none", "relu", "prelu")[seed % 3]
    res, post = (rng.standard_normal(dot.shape).astype(np.float32) for _ in range(2))
    conv.set_transform(mul, add, act, slope, bits_scale=bs, bits_shift=bt)
    got = conv(bits, c["out"], want=("floats", "bits", "ints"), res=res, post=post, isa=isa, threads=c["threads"])
    want = np_epilogue(dot, mul, add, act, slope, None, None, res, post)
    assert np.array_equal(got["floats"], want) and np.array_equal(got["ints"], dot), c
    assert np.array_equal(got["bits"], np_pack(want * bs + bt < 0)), c
    conv.set_transform(threshold=engine.thresholds(mul, add, conv.k))
    thr = conv(bits, c["out"], want=("bits",), threshold=True, isa=isa, threads=c["threads"])["bits"]
    assert np.array_equal(thr, np_pack(~(dot.astype(np.float64) * mul + add >= 0))), c
