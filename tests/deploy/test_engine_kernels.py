"""The 1-bit kernels against independent numpy computations, on every ISA this machine runs.

Integer results of the binary convolution must equal a numpy ±1 convolution (zero or +1
padding) bit for bit; packing must equal numpy's comparison + packbits; the output transform
must equal the same float32 arithmetic done by numpy. Every test runs once per row of the
engine's ISA table (reference, scalar, avx2, avx512, amx): rows this CPU lacks are compiled but
skipped with the features it lacks; every row must agree exactly, with any number of threads. A
forced row runs its own kernels on every layer (the amx row: int8 tiles on every dense conv); the
automatic choice, which may run a row's rival instead, is held to the same integers.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from bitnas.deploy import engine
from bitnas.errors import BitnasError

needs_engine = pytest.mark.skipif(not engine.available(), reason="C++ extension not built")

ROWS = engine.ISAS or ("reference", "scalar", "avx2", "avx512", "amx")


@pytest.fixture(params=ROWS)
def isa(request) -> str:
    """One row of the ISA table; skipped (one line, the missing features) where this machine lacks it."""
    if not engine.available():
        pytest.skip("C++ extension not built")
    row = {r["name"]: r for r in engine.isas()}[request.param]
    if not row["compiled"]:
        pytest.skip(f"{request.param}: not compiled for this architecture")
    if not row["supported"]:
        pytest.skip(f"{request.param}: this CPU lacks {row['missing']}")
    return request.param


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
    (2, 70, 45, 13, 11, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # several tiles, partial last one
    (2, 200, 130, 10, 9, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 100, 100, 9, 30, (3, 3), (1, 1), (1, 1), (1, 1), 100),  # depthwise, several row bands
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
def test_conv_integers_equal_numpy_on_every_isa(case, pad_value: int, isa: str) -> None:
    x, wt, conv, bits = _case(case, pad_value, seed=hash(case) % 1000 + pad_value)
    want = np_conv(x, wt, conv.stride, conv.padding, conv.dilation, conv.groups, pad_value,
                   conv.out_size(x.shape[2], x.shape[3]))
    got = conv(bits, want=("ints",), isa=isa)["ints"]
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{isa}: {np.abs(got - want).max()} off"


@needs_engine
@pytest.mark.parametrize("pad_value", [0, 1])
def test_offset_origin_and_explicit_size_as_in_factorized_reduce(pad_value: int, isa: str) -> None:
    """A 1×1 stride-2 conv of x[1:, 1:] zero-padded back to the grid of x (DARTS' factorised
    reduce on odd sizes): pad (−1, −1) and the output size of the unshifted conv; the missing
    row/column is 0 whatever the conv's own padding value."""
    rng = np.random.default_rng(3)
    x = np.where(rng.random((2, 20, 7, 7)) < 0.5, -1, 1)
    wt = np.where(rng.random((10, 20, 1, 1)) < 0.5, -1, 1)
    conv = engine.BinaryConv(wt < 0, 20, stride=(2, 2), padding=(-1, -1), pad_value=0)
    want = np_conv(x, wt, (2, 2), (-1, -1), (1, 1), 1, 0, (4, 4))
    assert np.all(want[:, 3, :, :] == 0) and np.all(want[:, :, 3, :] == 0)
    assert np.array_equal(conv(np_pack(x.transpose(0, 2, 3, 1) < 0), (4, 4), want=("ints",), isa=isa)["ints"], want)


@needs_engine
@pytest.mark.parametrize("c", [1, 7, 8, 63, 64, 65, 100, 130])
def test_pack_equals_numpy(c: int, isa: str) -> None:
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, 3, 5, c)).astype(np.float32)
    x[0, 0, 0, :] = 0.0
    x[0, 0, 1, :] = -0.0  # sign(−0) = +1
    scale = rng.standard_normal(c).astype(np.float32)
    shift = rng.standard_normal(c).astype(np.float32)
    assert np.array_equal(engine.pack(x, isa=isa), np_pack(x < 0))
    assert np.array_equal(engine.pack(x, scale, shift, isa=isa), np_pack(x * scale + shift < 0))
    wide = np.zeros((2, 3, 5, c + 9), np.float32)
    wide[..., 4:4 + c] = x
    # a channel slice of a wider NHWC buffer
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
def test_output_transform_equals_numpy_float32(case, act: str, isa: str) -> None:
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
    got = conv(bits, want=("floats", "bits"), res=res, post=post, isa=isa)
    assert np.array_equal(got["floats"], want), isa
    assert np.array_equal(got["bits"], want_bits), isa
    conv.set_transform(p["mul"], p["add"], act, p["slope"], p["sin"], p["sout"])
    plain = np_epilogue(dot, p["mul"], p["add"], act, p["slope"], p["sin"], p["sout"], None, None)
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
def test_threshold_bits_equal_float64_predicate(case, isa: str) -> None:
    x, wt, conv, bits = _case(case, 0, seed=2)
    dot = conv(bits, want=("ints",), isa="reference")["ints"].astype(np.float64)
    rng = np.random.default_rng(1)
    mul, add = rng.standard_normal(conv.out_channels), rng.standard_normal(conv.out_channels) * 3
    conv.set_transform(threshold=engine.thresholds(mul, add, conv.k))
    want = np_pack(~(dot * mul + add >= 0))
    assert np.array_equal(conv(bits, want=("bits",), threshold=True, isa=isa)["bits"], want), isa


@needs_engine
@pytest.mark.parametrize("case", [CASES[1], CASES[10]], ids=["dense", "depthwise"])
def test_threads_give_the_same_result(case, isa: str) -> None:
    x, wt, conv, bits = _case(case, 0, seed=4)
    conv.set_transform(np.full(conv.out_channels, 0.5, np.float32), np.ones(conv.out_channels, np.float32))
    one = conv(bits, want=("floats", "bits"), isa=isa, threads=1)
    three = conv(bits, want=("floats", "bits"), isa=isa, threads=3)
    assert all(np.array_equal(one[k], three[k]) for k in one)


@needs_engine
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[9], CASES[10], CASES[18]],
                         ids=["dense", "1x1", "groups", "depthwise", "tiles"])
def test_the_automatic_choice_gives_the_forced_rows_integers(case, threads: int) -> None:
    """isa=None: the best row, which (amx) may run each layer on its rival's kernels by measured
    speed; whichever runs, the integers are numpy's, the choice is one of the two rows, and it is
    kept for the shape (a second call runs the same row)."""
    x, wt, conv, bits = _case(case, 0, seed=7)
    want = np_conv(x, wt, conv.stride, conv.padding, conv.dilation, conv.groups, 0,
                   conv.out_size(x.shape[2], x.shape[3]))
    best = engine.resolve_isa()
    rival = {r["name"]: r for r in engine.isas()}[best]["rival"]
    got = conv(bits, want=("ints",), threads=threads)["ints"]
    assert np.array_equal(got, want)
    ran = conv.last_isa
    assert ran in {best, rival}
    if conv._conv.depthwise and rival:
        assert ran == rival  # the row's depthwise kernels are its rival's
    assert np.array_equal(conv(bits, want=("ints",), threads=threads)["ints"], want) and conv.last_isa == ran
    conv(bits, want=("ints",), isa=best, threads=threads)  # forced: the row's own kernels
    assert conv.last_isa == (rival if conv._conv.depthwise and rival else best)


@needs_engine
def test_float_output_into_a_channel_slice(isa: str) -> None:
    """Two convs write the two halves of one NHWC buffer (a concatenation without a copy)."""
    x, wt, conv, bits = _case(CASES[1], 0, seed=9)
    buf = np.full((*bits.shape[:1], *conv.out_size(9, 8), 2 * conv.out_channels + 3), 7.0, np.float32)
    conv.run(bits, out=buf[..., 3:3 + conv.out_channels], isa=isa)
    ints = conv(bits, want=("ints",), isa=isa)["ints"]
    assert np.array_equal(buf[..., 3:3 + conv.out_channels], ints.astype(np.float32))
    assert np.all(buf[..., :3] == 7.0) and np.all(buf[..., 3 + conv.out_channels:] == 7.0)


@needs_engine
def test_dispatch_picks_the_best_supported_row_and_obeys_the_environment(monkeypatch) -> None:
    f = engine.cpu_features()
    monkeypatch.delenv(engine.ENV_ISA, raising=False)
    avx512 = all(f[k] for k in ("avx512f", "avx512bw", "avx512vl", "avx512vpopcntdq", "os_avx512"))
    amx = avx512 and all(f[k] for k in ("amx_tile", "amx_int8", "os_amx", "amx_granted"))
    avx2 = all(f[k] for k in ("avx2", "fma", "popcnt", "bmi2", "os_avx"))
    assert engine.resolve_isa() == ("amx" if amx else "avx512" if avx512 else "avx2" if avx2 else "scalar")
    assert engine.isa_spec() == "auto"
    monkeypatch.setenv(engine.ENV_ISA, "scalar")
    assert engine.resolve_isa() == "scalar" and engine.isa_spec() == "scalar"
    assert engine.resolve_isa("reference") == "reference"
    monkeypatch.setenv(engine.ENV_ISA, "sse9")
    with pytest.raises(BitnasError, match="BITNAS_ENGINE_ISA"):
        engine.resolve_isa()


@needs_engine
def test_the_isa_table_lists_every_path_and_its_requirements() -> None:
    rows = engine.isas()
    assert [r["name"] for r in rows] == list(engine.ISAS) == ["reference", "scalar", "avx2", "avx512", "amx"]
    by = {r["name"]: r for r in rows}
    assert by["reference"]["supported"] and by["scalar"]["supported"]
    assert {"avx512f", "avx512bw", "avx512vl", "avx512vpopcntdq"} <= set(by["avx512"]["features"])
    assert set(by["avx512"]["features"]) | {"amx_tile", "amx_int8", "os_amx", "amx_granted"} <= set(by["amx"]["features"])
    assert by["amx"]["rival"] == "avx512" and all(r["rival"] is None for r in rows if r["name"] != "amx")
    f = engine.cpu_features()
    for r in rows:
        assert r["supported"] == (r["compiled"] and all(f[k] for k in r["features"])), r["name"]
        assert r["missing"] == ",".join(k for k in r["features"] if not f[k])
        assert r["tile_max"] > 0 and r["word_bytes"] in (8, 16, 72) and r["channel_pad"] % 32 == 0


@needs_engine
@pytest.mark.parametrize("row, feature", [("avx512", "avx512vpopcntdq"), ("amx", "amx_int8")])
def test_forcing_a_row_the_cpu_lacks_is_refused_in_one_line(monkeypatch, row: str, feature: str) -> None:
    """A CPU without a row's features: the row is refused (here simulated by a missing feature)."""
    real = engine.isas()
    fake = [dict(r, supported=False, missing=feature) if r["name"] == row else r for r in real]
    monkeypatch.setattr(engine, "isas", lambda: fake)
    engine._checked.cache_clear()
    monkeypatch.setattr(engine, "_checked", engine._checked.__wrapped__)  # uncached: reads the fake table
    monkeypatch.setenv(engine.ENV_ISA, row)
    for resolve in (engine.resolve_isa, engine.isa_spec):
        with pytest.raises(BitnasError) as e:
            resolve()
        assert "\n" not in str(e.value) and feature in str(e.value)
    with pytest.raises(BitnasError, match=f"^isa: .*lacks {feature}"):
        engine.resolve_isa(row)
    for r in real:  # and the extension itself refuses a row the machine lacks
        if not r["supported"]:
            with pytest.raises(ValueError, match="lacks"):
                engine.extension().pack(np.zeros((1, 1, 1, 3), np.float32), np.zeros((1, 1, 1, 1), np.uint64),
                                        None, None, r["name"], 1)


@needs_engine
@pytest.mark.parametrize("amx_int8, granted", [(True, True), (True, False), (False, False)])
def test_the_deployment_note_names_openvino_only_where_amx_runs(monkeypatch, amx_int8: bool, granted: bool) -> None:
    feats = dict(engine.cpu_features(), amx_int8=amx_int8, amx_granted=granted)
    monkeypatch.setattr(engine, "cpu_features", lambda: feats)
    note = engine.deployment_note()
    assert note == (engine.AMX_NOTE if amx_int8 and granted else None)
    assert note is None or ("\n" not in note and "--format openvino" in note)


@pytest.mark.skipif(not os.environ.get("BITNAS_REQUIRE_ENGINE"), reason="only where the engine must be built (CI)")
def test_the_extension_is_built_where_it_is_required() -> None:
    assert engine.available()


def test_missing_extension_says_how_to_build_it(monkeypatch) -> None:
    monkeypatch.setattr(engine, "_load", lambda: None)
    with pytest.raises(BitnasError) as e:
        engine.extension()
    msg = str(e.value)
    assert "\n" not in msg and "pip install -e ." in msg and "engine='torch'" in msg


@needs_engine
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_the_thread_pool_works_in_a_forked_child() -> None:
    """A process whose kernel threads have run forks (DataLoader workers, multiprocessing): the
    child's threaded convs give the parent's results instead of waiting on threads it does not have."""
    x, wt, conv, bits = _case(CASES[1], 0, seed=5)
    conv.set_transform(np.full(conv.out_channels, 0.5, np.float32), np.ones(conv.out_channels, np.float32))
    want = conv(bits, want=("floats",), threads=3)["floats"]
    pid = os.fork()
    if pid == 0:  # the child: exit status says whether it matched; never return into pytest
        code = 1
        try:
            code = 0 if np.array_equal(conv(bits, want=("floats",), threads=3)["floats"], want) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's threaded conv did not finish within 60 s (deadlocked thread pool)")
