"""The 1-bit kernels against independent numpy computations, on every ISA this machine runs.

Integer results of the binary convolution must equal a numpy ±1 convolution (zero or +1
padding) bit for bit; packing must equal numpy's comparison + packbits; the output transform
must equal the same float32 arithmetic done by numpy; the reference, scalar and AVX2 paths must
agree exactly, with any number of threads.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from bitnas.deploy import engine
from bitnas.errors import BitnasError

needs_engine = pytest.mark.skipif(not engine.available(), reason="C++ extension not built")

ISAS = [i for i in ("reference", "scalar", "avx2") if engine.available() and engine.extension().isa_supported(i)]


def np_pack(neg: np.ndarray) -> np.ndarray:
    """(N, H, W, C) booleans -> (N, H, W, words) uint64, bit c%64 of word c//64 (numpy packbits)."""
    n, h, w, c = neg.shape
    padded = np.zeros((n, h, w, engine.words(c) * 64), dtype=np.uint8)
    padded[..., :c] = neg
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8")


def np_conv(x: np.ndarray, wt: np.ndarray, stride, pad, dil, groups: int, pad_value: int, out_hw) -> np.ndarray:
    """Integer ±1 convolution: x (N, C, H, W) and wt (O, C/g, KH, KW) in {−1, +1}; outside the
    image x = pad_value. pad = (top, left), may be negative (an offset); returns (N, OH, OW, O)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = wt.shape
    (sh, sw), (pt, pl), (dh, dw), (oh, ow) = stride, pad, dil, out_hw
    top, left = max(0, pt), max(0, pl)
    bottom = max(0, (oh - 1) * sh - pt + (kh - 1) * dh - (h - 1))
    right = max(0, (ow - 1) * sw - pl + (kw - 1) * dw - (w - 1))
    xp = np.full((n, c, h + top + bottom, w + left + right), pad_value, dtype=np.int64)
    xp[:, :, top:top + h, left:left + w] = x
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    og = o // groups
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh - pt + top, kx * dw - pl + left
            patch = xp[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]
            for g in range(groups):
                out[:, g * og:(g + 1) * og] += np.einsum("ncyx,oc->noyx", patch[:, g * cg:(g + 1) * cg],
                                                         wt[g * og:(g + 1) * og, :, ky, kx].astype(np.int64))
    return out.transpose(0, 2, 3, 1)


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups)
CASES = [
    (1, 3, 5, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 36, 36, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (1, 65, 70, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 130, 17, 6, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (1, 64, 64, 11, 11, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    (2, 100, 9, 7, 9, (5, 5), (2, 1), (2, 2), (1, 1), 1),
    (1, 24, 24, 8, 8, (1, 7), (1, 1), (0, 3), (1, 1), 1),
    (2, 24, 24, 8, 8, (7, 1), (2, 1), (3, 0), (1, 1), 1),
    (2, 12, 18, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), 3),
    (1, 130, 130, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    (2, 36, 36, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1), 36),
    (1, 72, 72, 8, 8, (5, 5), (2, 2), (4, 4), (2, 2), 72),
    (3, 40, 40, 6, 7, (3, 3), (2, 2), (2, 2), (2, 2), 40),
    (1, 7, 14, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 7),
    (1, 300, 260, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 128, 64, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    (1, 256, 40, 5, 5, (1, 1), (2, 2), (0, 0), (1, 1), 2),
    (1, 2048, 16, 3, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),
]


def _case(case, pad_value: int, seed: int):
    n, cin, cout, h, w, k, s, p, d, g = case
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, cin, h, w)) < 0.5, -1, 1)
    wt = np.where(rng.random((cout, cin // g, *k)) < 0.5, -1, 1)
    conv = engine.BinaryConv(wt < 0, cin, stride=s, padding=p, dilation=d, groups=g, pad_value=pad_value)
    bits = np_pack(x.transpose(0, 2, 3, 1) < 0)
    return x, wt, conv, bits


@pytest.mark.parametrize("pad_value", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}o{}_{}x{}_k{}s{}p{}d{}g{}".format(
    c[0], c[1], c[2], c[3], c[4], c[5][0], c[6][0], c[7][0], c[8][0], c[9]))
@needs_engine
def test_conv_integers_equal_numpy_on_every_isa(case, pad_value: int) -> None:
    x, wt, conv, bits = _case(case, pad_value, seed=hash(case) % 1000 + pad_value)
    want = np_conv(x, wt, conv.stride, conv.padding, conv.dilation, conv.groups, pad_value,
                   conv.out_size(x.shape[2], x.shape[3]))
    for isa in ISAS:
        got = conv(bits, want=("ints",), isa=isa)["ints"]
        assert got.shape == want.shape
        assert np.array_equal(got, want), f"{isa}: {np.abs(got - want).max()} off"


@needs_engine
@pytest.mark.parametrize("pad_value", [0, 1])
def test_offset_origin_and_explicit_size_as_in_factorized_reduce(pad_value: int) -> None:
    """A 1×1 stride-2 conv of x[1:, 1:] zero-padded back to the grid of x (DARTS' factorised
    reduce on odd sizes): pad (−1, −1) and the output size of the unshifted conv; the missing
    row/column is 0 whatever the conv's own padding value."""
    rng = np.random.default_rng(3)
    x = np.where(rng.random((2, 20, 7, 7)) < 0.5, -1, 1)
    wt = np.where(rng.random((10, 20, 1, 1)) < 0.5, -1, 1)
    conv = engine.BinaryConv(wt < 0, 20, stride=(2, 2), padding=(-1, -1), pad_value=0)
    want = np_conv(x, wt, (2, 2), (-1, -1), (1, 1), 1, 0, (4, 4))
    assert np.all(want[:, 3, :, :] == 0) and np.all(want[:, :, 3, :] == 0)
    for isa in ISAS:
        assert np.array_equal(conv(np_pack(x.transpose(0, 2, 3, 1) < 0), (4, 4), want=("ints",), isa=isa)["ints"], want)


@needs_engine
@pytest.mark.parametrize("c", [1, 7, 8, 63, 64, 65, 100, 130])
def test_pack_equals_numpy(c: int) -> None:
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, 3, 5, c)).astype(np.float32)
    x[0, 0, 0, :] = 0.0
    x[0, 0, 1, :] = -0.0  # sign(−0) = +1
    scale = rng.standard_normal(c).astype(np.float32)
    shift = rng.standard_normal(c).astype(np.float32)
    for isa in ISAS:
        assert np.array_equal(engine.pack(x, isa=isa), np_pack(x < 0))
        assert np.array_equal(engine.pack(x, scale, shift, isa=isa), np_pack(x * scale + shift < 0))
    wide = np.zeros((2, 3, 5, c + 9), np.float32)
    wide[..., 4:4 + c] = x
    for isa in ISAS:  # a channel slice of a wider NHWC buffer
        assert np.array_equal(engine.pack(wide[..., 4:4 + c], isa=isa), np_pack(x < 0))


def np_epilogue(dot, mul, add, act, slope, sin, sout, res, post):
    """The output transform in numpy float32, operation by operation."""
    v = dot.astype(np.float32) * mul
    v = v + add
    if res is not None:
        v = v + res
    if act == "relu":
        v = np.where(v > 0, v, np.float32(0))
    elif act == "prelu":
        v = np.where(v > 0, v, slope * v)
    elif act == "rprelu":
        u = v - sin
        u = np.where(u > 0, u, slope * u)
        v = u + sout
    if post is not None:
        v = v + post
    return v.astype(np.float32)


@needs_engine
@pytest.mark.parametrize("act", ["none", "relu", "prelu", "rprelu"])
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[10]], ids=["dense", "1x1", "depthwise"])
def test_output_transform_equals_numpy_float32(case, act: str) -> None:
    x, wt, conv, bits = _case(case, 0, seed=11)
    rng = np.random.default_rng(5)
    o = conv.out_channels
    p = {k: rng.standard_normal(o).astype(np.float32) for k in ("mul", "add", "slope", "sin", "sout", "bs", "bt")}
    p["mul"][0] = 0.0
    conv.set_transform(p["mul"], p["add"], act, p["slope"], p["sin"], p["sout"], p["bs"], p["bt"])
    dot = conv(bits, want=("ints",), isa="reference")["ints"]
    res = rng.standard_normal(dot.shape).astype(np.float32)
    post = rng.standard_normal(dot.shape).astype(np.float32)
    want = np_epilogue(dot, p["mul"], p["add"], act, p["slope"], p["sin"], p["sout"], res, post)
    want_bits = np_pack(want * p["bs"] + p["bt"] < 0)
    for isa in ISAS:
        got = conv(bits, want=("floats", "bits"), res=res, post=post, isa=isa)
        assert np.array_equal(got["floats"], want), isa
        assert np.array_equal(got["bits"], want_bits), isa
    conv.set_transform(p["mul"], p["add"], act, p["slope"], p["sin"], p["sout"])
    plain = np_epilogue(dot, p["mul"], p["add"], act, p["slope"], p["sin"], p["sout"], None, None)
    for isa in ISAS:
        got = conv(bits, want=("floats", "bits"), isa=isa)
        assert np.array_equal(got["floats"], plain) and np.array_equal(got["bits"], np_pack(plain < 0)), isa


def test_thresholds_decide_exactly_in_float64() -> None:
    rng = np.random.default_rng(0)
    k = 40
    mul = np.concatenate([rng.standard_normal(60), [0.0, 0.0, 0.5, -0.5, 1e-300, -3.0, np.nan, 2.0, -2.0, 1.0]])
    add = np.concatenate([rng.standard_normal(60) * 10, [1.0, -1.0, 3.0, -3.0, -1.0, 6.0, 0.0, np.inf, -np.inf, np.nan]])
    add[:10] = -mul[:10] * rng.integers(-k, k + 1, 10)  # exact ties: mul*dot + add == 0
    sign, thr = engine.thresholds(mul, add, k)
    dots = np.arange(-k, k + 1)
    with np.errstate(invalid="ignore"):
        want = ~(mul[None, :] * dots[:, None] + add[None, :] >= 0)  # negative, with NaN -> negative
    got = dots[:, None] * sign[None, :] < thr[None, :]
    assert np.array_equal(got, want)


@needs_engine
@pytest.mark.parametrize("case", [CASES[1], CASES[9], CASES[11]], ids=["dense", "groups", "depthwise"])
def test_threshold_bits_equal_float64_predicate(case) -> None:
    x, wt, conv, bits = _case(case, 0, seed=2)
    dot = conv(bits, want=("ints",), isa="reference")["ints"].astype(np.float64)
    rng = np.random.default_rng(1)
    mul, add = rng.standard_normal(conv.out_channels), rng.standard_normal(conv.out_channels) * 3
    conv.set_transform(threshold=engine.thresholds(mul, add, conv.k))
    want = np_pack(~(dot * mul + add >= 0))
    for isa in ISAS:
        assert np.array_equal(conv(bits, want=("bits",), threshold=True, isa=isa)["bits"], want), isa


@needs_engine
@pytest.mark.parametrize("case", [CASES[1], CASES[10]], ids=["dense", "depthwise"])
def test_threads_give_the_same_result(case) -> None:
    x, wt, conv, bits = _case(case, 0, seed=4)
    conv.set_transform(np.full(conv.out_channels, 0.5, np.float32), np.ones(conv.out_channels, np.float32))
    for isa in ISAS:
        one = conv(bits, want=("floats", "bits"), isa=isa, threads=1)
        three = conv(bits, want=("floats", "bits"), isa=isa, threads=3)
        assert all(np.array_equal(one[k], three[k]) for k in one)


@needs_engine
def test_float_output_into_a_channel_slice() -> None:
    """Two convs write the two halves of one NHWC buffer (a concatenation without a copy)."""
    x, wt, conv, bits = _case(CASES[1], 0, seed=9)
    buf = np.full((*bits.shape[:1], *conv.out_size(9, 8), 2 * conv.out_channels + 3), 7.0, np.float32)
    for isa in ISAS:
        conv.run(bits, out=buf[..., 3:3 + conv.out_channels], isa=isa)
        ints = conv(bits, want=("ints",), isa=isa)["ints"]
        assert np.array_equal(buf[..., 3:3 + conv.out_channels], ints.astype(np.float32))
        assert np.all(buf[..., :3] == 7.0) and np.all(buf[..., 3 + conv.out_channels:] == 7.0)


@needs_engine
def test_dispatch_picks_avx2_when_the_cpu_has_it_and_obeys_the_environment(monkeypatch) -> None:
    f = engine.cpu_features()
    monkeypatch.delenv(engine.ENV_ISA, raising=False)
    assert engine.resolve_isa() == ("avx2" if f["avx2"] and f["fma"] and f["popcnt"] and f["bmi2"] else "scalar")
    monkeypatch.setenv(engine.ENV_ISA, "scalar")
    assert engine.resolve_isa() == "scalar"
    assert engine.resolve_isa("reference") == "reference"
    monkeypatch.setenv(engine.ENV_ISA, "sse9")
    with pytest.raises(BitnasError, match="BITNAS_ENGINE_ISA"):
        engine.resolve_isa()


@needs_engine
def test_both_optimised_paths_run_here_when_the_cpu_has_avx2() -> None:
    f = engine.cpu_features()
    assert "scalar" in ISAS and "reference" in ISAS
    if f["avx2"]:
        assert "avx2" in ISAS


@pytest.mark.skipif(not os.environ.get("BITNAS_REQUIRE_ENGINE"), reason="only where the engine must be built (CI)")
def test_the_extension_is_built_where_it_is_required() -> None:
    assert engine.available()


def test_missing_extension_says_how_to_build_it(monkeypatch) -> None:
    monkeypatch.setattr(engine, "_load", lambda: None)
    with pytest.raises(BitnasError) as e:
        engine.extension()
    msg = str(e.value)
    assert "\n" not in msg and "pip install -e ." in msg and "engine='torch'" in msg
