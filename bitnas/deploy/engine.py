"""Python side of the 1-bit kernels (`bitnas.deploy._engine`): availability, ISA, numpy in and out.

The extension is optional: without it `engine="torch"` still works, and asking for the bitpack
engine raises one `BitnasError` line saying how to build it. The kernels take plain numpy
buffers (NHWC floats, packed uint64 words); torch tensors reach them through `.numpy()` views.

ISA: the engine's ISA table (csrc/isa.cc, `isas()`) lists every path, plain to fastest:
reference, scalar, avx2, avx512, amx. `isa=None` uses $BITNAS_ENGINE_ISA when set (any row's name),
else the best row this CPU and OS support (AMX-INT8 granted by the OS, else AVX-512 with
F/BW/VL/VPOPCNTDQ, else AVX2 with AVX2/FMA/POPCNT/BMI2, else the portable scalar kernels).
Forcing a row the CPU lacks is refused. A forced row runs its own kernels on every layer; the
automatic choice (`isa_spec` "auto") lets a row with a rival (amx: avx512) run each binary conv's
dense core on whichever of the two was faster for that layer and input shape (the row only when
at least 10 % faster), timed once on the first call (`BinaryConv.last_isa` tells which ran); both
give the same integers.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache, partial
from types import ModuleType
from typing import Any, Callable

import numpy as np

from bitnas.errors import BitnasError

ENV_ISA = "BITNAS_ENGINE_ISA"
BUILD_HINT = ("the bitpack engine's C++ extension (bitnas.deploy._engine) is not built; install a C++17 compiler and "
              "run `pip install -e .` (or `make install`) in the bitnas source tree, or use engine='torch'")
ACTS = {"none": 0, "relu": 1, "prelu": 2, "rprelu": 3}


@lru_cache(maxsize=1)
def _load() -> ModuleType | None:
    try:
        from bitnas.deploy import _engine
    except ImportError:
        return None
    return _engine


def available() -> bool:
    """True when the C++ extension is built and importable."""
    return _load() is not None


def extension() -> ModuleType:
    """The extension module, or a one-line BitnasError saying how to build it."""
    mod = _load()
    if mod is None:
        raise BitnasError(BUILD_HINT)
    return mod


def cpu_features() -> dict[str, bool]:
    """CPU features the engine reads (cpuid + XGETBV), including AMX and whether Linux granted it."""
    return dict(extension().cpu_features())


def isas() -> list[dict[str, Any]]:
    """The engine's ISA table, plain to fastest: name, features, compiled, supported, missing, layout."""
    return [dict(r) for r in _table()]


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, Any], ...]:
    return tuple(extension().isas())


@lru_cache(maxsize=64)
def _checked(name: str, src: str) -> str:
    """`name` when a row of the table this machine supports, else a one-line BitnasError."""
    rows = {r["name"]: r for r in isas()}
    if name not in rows:
        raise BitnasError(f"{src}: '{name}' is not one of auto, {', '.join(rows)}")
    row = rows[name]
    if not row["compiled"]:
        raise BitnasError(f"{src}: the {name} kernels are not compiled for this architecture")
    if not row["supported"]:
        raise BitnasError(f"{src}: this CPU (or OS) lacks {row['missing']}, which the {name} kernels need; "
                          f"supported here: {', '.join(supported_isas())}")
    return name


ISAS: tuple[str, ...] = tuple(r["name"] for r in _load().isas()) if _load() is not None else ()


def supported_isas() -> list[str]:
    """Names of the rows this machine runs (compiled, and the CPU and OS have their features)."""
    return [r["name"] for r in isas() if r["supported"]]


def resolve_isa(isa: str | None = None) -> str:
    """The kernels to use: `isa`, else $BITNAS_ENGINE_ISA, else the best this CPU supports."""
    mod = extension()
    name = (isa or os.environ.get(ENV_ISA, "")).strip().lower() or "auto"
    if name == "auto":
        return str(mod.best_isa())
    return _checked(name, "isa" if isa else f"${ENV_ISA}")


AMX_NOTE = ("note: this CPU has AMX-INT8, on which the OpenVINO export (`bitnas export CHECKPOINT --format "
            "openvino`, run with `--engine openvino`) runs 1-bit networks faster than the bitpack engine; see the "
            "README's 'Which to deploy'")


def deployment_note() -> str | None:
    """One line for bitpack users on a CPU with AMX-INT8 that Linux grants: OpenVINO's int8 kernels
    run the exact ±1 graph faster there than this engine (its amx row only reaches its popcount
    row's speed, measured in benchmarks/inference.py); None elsewhere or without the extension."""
    if not available():
        return None
    f = cpu_features()
    return AMX_NOTE if f.get("amx_int8") and f.get("amx_granted") else None


def isa_spec(isa: str | None = None) -> str:
    """What the kernels are told: "auto" (the best row, with its per-layer choice) unless a row is
    forced by `isa` or $BITNAS_ENGINE_ISA, then that row's checked name."""
    extension()
    name = (isa or os.environ.get(ENV_ISA, "")).strip().lower() or "auto"
    return name if name == "auto" else _checked(name, "isa" if isa else f"${ENV_ISA}")


def words(channels: int) -> int:
    """64-bit words per pixel of `channels` packed channels."""
    return (channels + 63) // 64


def pack(x: np.ndarray, scale: np.ndarray | None = None, shift: np.ndarray | None = None, *,
         isa: str | None = None, threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Pack float32 NHWC `x` into (N, H, W, words) uint64 (into `out` when given): bit set where
    x*scale + shift < 0."""
    n, h, w, c = x.shape
    if out is None:
        out = np.empty((n, h, w, words(c)), dtype=np.uint64)
    extension().pack(x, out, scale, shift, resolve_isa(isa), threads)
    return out


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def thresholds(mul: np.ndarray, add: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer form of "mul*dot + add < 0" for integer dot in [-k, k]: (sign, thr) with the
    predicate equal to dot*sign < thr, decided exactly in float64 (sign(0) = +1, NaN -> -1)."""
    mul, add = np.asarray(mul, np.float64), np.asarray(add, np.float64)
    sign = np.sign(np.nan_to_num(mul)).astype(np.int64)
    thr = np.where(add >= 0, 0, 1).astype(np.int64)  # mul == 0: negative iff add < 0
    pos = mul > 0
    neg = mul < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(mul != 0, -add / np.where(mul != 0, mul, 1.0), 0.0)
    q = np.clip(np.nan_to_num(q, nan=0.0), -k - 2, k + 2)
    # mul > 0: positive iff dot >= t, t = ceil(-add/mul) corrected by the exact predicate.
    t = np.ceil(q).astype(np.int64)
    for _ in range(3):
        t = np.where(pos & (mul * (t - 1) + add >= 0), t - 1, t)
        t = np.where(pos & (mul * t + add < 0), t + 1, t)
    # mul < 0: positive iff dot <= u; negative iff -dot < -u.
    u = np.floor(q).astype(np.int64)
    for _ in range(3):
        u = np.where(neg & (mul * (u + 1) + add >= 0), u + 1, u)
        u = np.where(neg & (mul * u + add < 0), u - 1, u)
    thr = np.where(pos, t, np.where(neg, -u, thr))
    # An infinite shift decides alone; NaN anywhere (or an infinite scale) gives −1, as sign(NaN) does.
    inf_add = np.isinf(add) & np.isfinite(mul)
    sign = np.where(inf_add, 0, sign)
    thr = np.where(inf_add, np.where(add > 0, 0, 1), thr)
    bad = np.isnan(mul) | np.isnan(add) | np.isinf(mul)
    sign = np.where(bad, 0, sign)
    thr = np.where(bad, 1, thr)
    return sign.astype(np.int32), np.clip(thr, -k - 2, k + 2).astype(np.int32)


class BinaryConv:
    """One binary convolution on packed activations, with its fused output transform.

    neg: bool/uint8 (C_out, C_in/groups, KH, KW), true where the weight is −1 (sign(0) = +1).
    pad_value: 0 (zero padding: a ternary border, corrected exactly) or 1.
    """

    def __init__(self, neg: np.ndarray, in_channels: int, *, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1), groups: int = 1,
                 pad_value: float = 0.0) -> None:
        if pad_value not in (0.0, 1.0):
            raise BitnasError(f"pad_value {pad_value}: the bitpack engine handles 0 and 1")
        neg = np.ascontiguousarray(neg, dtype=np.uint8)
        self.out_channels, _, self.kh, self.kw = (int(s) for s in neg.shape)
        self.in_channels, self.groups = int(in_channels), int(groups)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.pad_value = float(pad_value)
        self.k = int(math.prod(neg.shape[1:]))
        self._conv = extension().BinaryConv(neg, self.in_channels, self.groups, self.stride[0], self.stride[1],
                                            self.padding[0], self.padding[1], self.dilation[0], self.dilation[1],
                                            self.pad_value == 1.0)
        self.set_transform()

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return (conv_out_size(h, self.kh, self.stride[0], self.padding[0], self.dilation[0]),
                conv_out_size(w, self.kw, self.stride[1], self.padding[1], self.dilation[1]))

    def set_transform(self, mul: np.ndarray | None = None, add: np.ndarray | None = None, act: str = "none",
                      slope: np.ndarray | None = None, shift_in: np.ndarray | None = None,
                      shift_out: np.ndarray | None = None, bits_scale: np.ndarray | None = None,
                      bits_shift: np.ndarray | None = None, threshold: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Constants of the output transform: v = dot*mul + add [+ res], act, [+ post]; bits of
        v*bits_scale + bits_shift < 0; `threshold` = `thresholds(...)` for bits straight from dot."""
        f32 = (lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32))
        thr_sign, thr = threshold if threshold is not None else (None, None)
        self._conv.set_transform(f32(mul), f32(add), ACTS[act], f32(slope), f32(shift_in), f32(shift_out),
                                 f32(bits_scale), f32(bits_shift), thr_sign, thr)

    def run(self, bits: np.ndarray, out_hw: tuple[int, int] | None = None, *, out: np.ndarray | None = None,
            out_bits: np.ndarray | None = None, out_ints: np.ndarray | None = None, res: np.ndarray | None = None,
            post: np.ndarray | None = None, threshold: bool = False, isa: str | None = None, threads: int = 1) -> None:
        """Convolve packed `bits` (N, H, W, words); write into the given NHWC outputs."""
        oh, ow = out_hw or self.out_size(bits.shape[1], bits.shape[2])
        self._conv.run(bits, oh, ow, out, out_bits, out_ints, res, post, threshold, isa_spec(isa), threads)

    def runner(self, isa: str | None = None, threads: int = 1) -> Callable[..., None]:
        """`run` with the ISA checked once, for a graph's per-forward loop (a batch-1 DARTS_V2
        forward makes ~440 calls): f(bits, oh, ow, out, out_bits, out_ints, res, post, threshold),
        all positional, output size given."""
        return partial(self._conv.run, isa=isa_spec(isa), threads=threads)

    @property
    def last_isa(self) -> str | None:
        """The ISA row whose kernels ran the last call (None before any)."""
        return self._conv.last_isa

    def __call__(self, x: np.ndarray, out_hw: tuple[int, int] | None = None, *, want: tuple[str, ...] = ("floats",),
                 isa: str | None = None, threads: int = 1, **kw: Any) -> dict[str, np.ndarray]:
        """Allocate the outputs named in `want` (floats, bits, ints), run on packed `x`, return them."""
        n = x.shape[0]
        oh, ow = out_hw or self.out_size(x.shape[1], x.shape[2])
        c = self.out_channels
        shapes = {"floats": ((n, oh, ow, c), np.float32), "bits": ((n, oh, ow, words(c)), np.uint64),
                  "ints": ((n, oh, ow, c), np.int32)}
        got = {k: np.empty(*shapes[k]) for k in want}
        self.run(x, (oh, ow), out=got.get("floats"), out_bits=got.get("bits"), out_ints=got.get("ints"),
                 isa=isa, threads=threads, **kw)
        return got
