"""Inference graph of an exported network: binary convs on the XNOR-popcount kernels, the rest in torch.

The network rebuilt from the export (float path) is walked once and every op becomes a unit:
- a *chain* of binary convs (a conv unit, a separable unit or conv, residual blocks in a row,
  conv 7×1/1×7), each conv with its fused output transform (α and the BN after it folded into
  one multiply-add, residual shortcut, PReLU/RPReLU/ReLU, the node's other addend). A conv whose
  output only feeds the next conv's sign writes that conv's packed input straight away (by an
  exact integer threshold when nothing else touches the value);
- the binarised factorised reduce (two strided 1×1 convs writing the halves of one output);
- identity (its packed form shared by every consumer), zero, and anything else, which runs as the
  torch module it is (stem, pools, classifier, full-precision convs).
Activations between units are float NHWC (numpy arrays, seen by torch as channels-last tensors)
with their packed forms cached per sign transform, so a state read by several binary ops is
packed once; a unit whose readers all pack under one transform writes that packed form in its last
conv's epilogue instead (`emit_for`). The units' outputs (floats and packed bits) come from the
network's arena (arena.py), reused from forward to forward. Cells and the network module: network.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bitnas.binary import BinaryConv2d
from bitnas.deploy import engine
from bitnas.deploy.arena import Arena
from bitnas.deploy.fold import bn_affine
from bitnas.deploy.plan import (ChainPlan, ConcatPlan, IdentityPlan, Plan, PostAddPlan, ReducePlan, SequencePlan,
                                SignTransform, Step, ZeroPlan, act_params, describe, folded, neg_bits)

CL = torch.channels_last


class Act:
    """A float activation and its packed forms by sign transform. The floats are held as an NCHW
    torch tensor (channels-last memory) and/or its NHWC numpy view, each made from the other on
    first use: kernels read and write numpy, torch units take tensors, and a chain of binary convs
    at batch 1 should not pay for tensor views nobody reads."""

    __slots__ = ("_t", "_a", "packs")

    def __init__(self, t: Tensor | None = None, a: np.ndarray | None = None) -> None:
        if t is not None and not _nhwc_layout(t):
            t = t.contiguous(memory_format=CL)
        self._t, self._a = t, a
        self.packs: dict[Any, np.ndarray] = {}

    @property
    def t(self) -> Tensor:
        if self._t is None:
            self._t = torch.from_numpy(self._a).permute(0, 3, 1, 2)
        return self._t

    def nhwc(self) -> np.ndarray:
        if self._a is None:
            self._a = self._t.permute(0, 2, 3, 1).numpy()
        return self._a

    def packed(self, transform: "SignTransform | None", isa: str, threads: int, arena: Arena, slot: Any) -> np.ndarray:
        """The packed form under `transform`, packed on first use into the arena's `slot`
        (`isa` as `engine.isa_spec` gives it)."""
        key = pack_key(transform)
        if key not in self.packs:
            scale, shift = (transform.scale, transform.shift) if transform is not None else (None, None)
            x = self.nhwc()
            n, h, w, c = x.shape
            out = arena.array(slot, (n, h, w, engine.words(c)), np.uint64)
            engine.extension().pack(x, out, scale, shift, isa, threads)
            self.packs[key] = out
        return self.packs[key]


def pack_key(transform: "SignTransform | None") -> Any:
    """The key of a packed form in `Act.packs`: the sign transform's identity (None: plain sign)."""
    return id(transform) if transform is not None else None


def _set_output(st: Step, sign: SignTransform | None) -> None:
    """Set `st`'s float output transform (α/BN, residual, activation); when it also writes packed bits,
    they are the signs `sign` (the next conv's input transform) takes of its floats."""
    mul, add = st.fold
    st.conv.set_transform(mul, add, **act_params(st.act, st.conv.out_channels),
                          bits_scale=sign.scale if sign is not None else None,
                          bits_shift=sign.shift if sign is not None else None)


def _nhwc_layout(t: Tensor) -> bool:
    """True when t (NCHW shape) is NHWC in memory with contiguous channels and equally spaced
    pixels — a channels-last tensor or a channel slice of one — so the kernels can read it."""
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    return (c == 1 or sc == 1) and sw >= c and (h == 1 or sh == w * sw) and (n == 1 or sn == h * w * sw)


class Compiler:
    """Builds units from the modules of the float network and the export's folded constants."""

    def __init__(self, exp: dict[str, Any], isa: str, threads: int, arena: Arena) -> None:
        self.rows = {row["name"]: row for row in exp["binary"]}
        self.exp = exp
        self.isa, self.threads, self.arena = isa, threads, arena
        self.compiled = 0  # binary convs placed on the kernels
        self.kernels: list[engine.BinaryConv] = []
        self.layers: set[int] = set()  # ids of the modules placed on the kernels

    def fold(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return folded(self.exp, self.rows[name])

    def kernel(self, layer: BinaryConv2d, name: str, padding: tuple[int, int] | None = None) -> engine.BinaryConv:
        row = self.rows[name]
        self.compiled += 1
        conv = engine.BinaryConv(neg_bits(row, self.exp["bits"]), layer.in_channels, stride=tuple(layer.stride),
                                 padding=padding or tuple(layer.padding), dilation=tuple(layer.dilation),
                                 groups=layer.groups, pad_value=layer.pad_value if any(layer.padding) else 0.0)
        self.kernels.append(conv)
        self.layers.add(id(layer))
        return conv

    def chain(self, steps: list[Step]) -> "Chain":
        for i, st in enumerate(steps):
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            st.conv = self.kernel(st.layer, st.name)
            st.fold = mul, add = self.fold(st.name)
            st.float_out = nxt is None or nxt.shortcut is not None
            st.threshold = not st.float_out and st.shortcut is None and st.act is None
            sign = nxt.sign if nxt is not None else None
            if st.threshold:
                s = sign.scale.astype(np.float64) if sign is not None and sign.scale is not None else 1.0
                t = sign.shift.astype(np.float64) if sign is not None and sign.shift is not None else 0.0
                st.conv.set_transform(threshold=engine.thresholds(s * mul, s * add + t, st.conv.k))
            else:
                _set_output(st, sign)
        return Chain(steps, self.isa, self.threads, self.arena)

    def unit(self, m: nn.Module, name: str) -> "Unit":
        return self.build(describe(m, name))

    def build(self, p: Plan) -> "Unit":
        if isinstance(p, ZeroPlan):
            return ZeroUnit()
        if isinstance(p, IdentityPlan):
            return IdentityUnit()
        if isinstance(p, ChainPlan):
            return self.chain(p.steps)
        if isinstance(p, ReducePlan):
            return self.factorized_reduce(p.module, p.name)
        if isinstance(p, PostAddPlan):
            return PostAddUnit(self.chain(p.main.steps), TorchUnit(p.side))
        if isinstance(p, ConcatPlan):
            return ConcatUnit(self.build(p.first), [self.chain(c.steps) for c in p.chains], self.arena)
        if isinstance(p, SequencePlan):
            return SequenceUnit([self.build(q) for q in p.parts])
        return TorchUnit(p.module)

    def factorized_reduce(self, m: nn.Module, name: str) -> "FactorizedReduceUnit":
        convs = []
        for conv_name, layer, pad in (("conv_1", m.conv_1, None), ("conv_2", m.conv_2, (-1, -1))):
            full = f"{name}.{conv_name}"
            k = self.kernel(layer, full, pad)
            mul, add = self.fold(full)
            k.set_transform(mul, add)
            convs.append(k)
        return FactorizedReduceUnit(convs, self.isa, self.threads, self.arena)


class Unit:
    """A compiled op: Act -> Act (or ZERO); `fuses_post` units add a second addend in their epilogue."""

    fuses_post = False

    def __call__(self, x: Act, post: Act | None = None) -> Any:
        raise NotImplementedError

    def wants(self) -> list[SignTransform | None]:
        """The sign transforms this unit packs its input under (empty: it reads floats only)."""
        return []

    def emit(self, sign: SignTransform | None) -> bool:
        """Have the output's last binary conv also write the output's packed form under `sign` (into
        the returned Act's packs), so that its consumer skips a packing pass; False when it cannot."""
        return False


def emit_for(producer: Unit, consumers: list[Unit]) -> bool:
    """Let `producer` write the packed bits its `consumers` read, when they all pack under one sign
    transform (the epilogue writes one packed form)."""
    wanted = [s for c in consumers for s in c.wants()]
    if not wanted or len({pack_key(s) for s in wanted}) != 1:
        return False
    return producer.emit(wanted[0])


ZERO = object()


class ZeroUnit(Unit):
    """An op that contributes nothing (DARTS' `none`): the node sum skips it."""

    def __call__(self, x: Act, post: Act | None = None) -> Any:
        return ZERO


class IdentityUnit(Unit):
    def __call__(self, x: Act, post: Act | None = None) -> Any:
        return x


def fold_conv_bn(m: nn.Module) -> nn.Module:
    """`m` with every fp32 Conv2d → BatchNorm2d pair inside a Sequential replaced by one conv with
    the BN folded into its weights and bias (what inference engines do; one pass fewer)."""
    if not isinstance(m, nn.Sequential):
        return m
    mods = list(m.children())
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        a, b = mods[i], mods[i + 1] if i + 1 < len(mods) else None
        if (type(a) is nn.Conv2d and isinstance(b, nn.BatchNorm2d) and not b.training
                and b.track_running_stats and a.padding_mode == "zeros"):
            scale, shift = bn_affine(b)
            conv = nn.Conv2d(a.in_channels, a.out_channels, a.kernel_size, a.stride, a.padding, a.dilation,
                             a.groups, bias=True)
            with torch.no_grad():
                w = a.weight.double() * torch.from_numpy(scale).view(-1, 1, 1, 1)
                bias = torch.from_numpy(shift) + (torch.from_numpy(scale) * a.bias.double() if a.bias is not None else 0)
                conv.weight.copy_(w.float())
                conv.bias.copy_(bias.float())
            out.append(conv.to(memory_format=CL).eval())
            i += 2
        else:
            out.append(fold_conv_bn(a))
            i += 1
    return nn.Sequential(*out)


class TorchUnit(Unit):
    def __init__(self, m: nn.Module) -> None:
        self.m = fold_conv_bn(m)

    def __call__(self, x: Act, post: Act | None = None) -> Any:
        return Act(self.m(x.t))


class Chain(Unit):
    fuses_post = True

    def __init__(self, steps: list[Step], isa: str, threads: int, arena: Arena) -> None:
        self.steps, self.isa, self.threads, self.arena = steps, isa, threads, arena
        self.emits = False  # the last conv writes the output's packed form too
        self.emit_key: Any = None
        self.runs = [st.conv.runner(isa, threads) for st in steps]
        self.sizes: dict[tuple[int, int], list[tuple[int, int]]] = {}  # input (h, w) -> each step's output

    def out_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Each step's output size for an input of h×w pixels (computed once per input size)."""
        sizes = self.sizes.get((h, w))
        if sizes is None:
            sizes, size = [], (h, w)
            for st in self.steps:
                size = st.conv.out_size(*size)
                sizes.append(size)
            self.sizes[(h, w)] = sizes
        return sizes

    def wants(self) -> list[SignTransform | None]:
        return [self.steps[0].sign]

    def emit(self, sign: SignTransform | None) -> bool:
        _set_output(self.steps[-1], sign)
        self.emits, self.emit_key = True, pack_key(sign)
        return True

    def __call__(self, x: Act, post: Act | None = None, out: np.ndarray | None = None) -> Act:
        """Run the chain on x; `post` is added last; `out` (an NHWC array, e.g. a channel slice of a
        larger buffer) receives the result instead of a new array."""
        steps = self.steps
        bits = x.packed(steps[0].sign, self.isa, self.threads, self.arena, (id(self), "in"))
        n = bits.shape[0]
        sizes = self.out_sizes(bits.shape[1], bits.shape[2])
        last = len(steps) - 1
        prev = x
        for i, st in enumerate(steps):
            oh, ow = sizes[i]
            res = None
            if st.shortcut == "identity":
                res = prev.nhwc()
            elif st.shortcut == "avgpool":
                res = st.pool(prev.t).contiguous(memory_format=CL).permute(0, 2, 3, 1).numpy()
            dst = out_bits = None
            if i == last and out is not None:
                dst = out
            elif st.float_out:
                dst = self.arena.array((id(self), i, "floats"), (n, oh, ow, st.conv.out_channels), np.float32)
            if i < last or self.emits:
                out_bits = self.arena.array((id(self), i, "bits"), (n, oh, ow, engine.words(st.conv.out_channels)),
                                            np.uint64)
            p = post.nhwc() if i == last and post is not None else None
            self.runs[i](bits, oh, ow, dst, out_bits, None, res, p, st.threshold)
            bits = out_bits
            if dst is not None:
                prev = Act(a=dst)
        if self.emits:
            prev.packs[self.emit_key] = bits
        return prev


class FactorizedReduceUnit(Unit):
    fuses_post = True

    def __init__(self, convs: list[engine.BinaryConv], isa: str, threads: int, arena: Arena) -> None:
        self.convs, self.isa, self.threads, self.arena = convs, isa, threads, arena

    def wants(self) -> list[SignTransform | None]:
        return [None]

    def __call__(self, x: Act, post: Act | None = None, out: np.ndarray | None = None) -> Act:
        bits = x.packed(None, self.isa, self.threads, self.arena, (id(self), "in"))
        n, h, w = bits.shape[:3]
        oh, ow = self.convs[0].out_size(h, w)
        half = self.convs[0].out_channels
        if out is None:
            out = self.arena.array((id(self), "floats"), (n, oh, ow, 2 * half), np.float32)
        p = post.nhwc() if post is not None else None
        for i, conv in enumerate(self.convs):
            sl = slice(i * half, (i + 1) * half)
            conv.run(bits, (oh, ow), out=out[..., sl], post=None if p is None else p[..., sl], isa=self.isa,
                     threads=self.threads)
        return Act(a=out)


class PostAddUnit(Unit):
    """main(x) + side(x), the addition fused into main's output transform (Bi-Real downsample)."""

    fuses_post = False

    def __init__(self, main: Chain, side: Unit) -> None:
        self.main, self.side = main, side

    def wants(self) -> list[SignTransform | None]:
        return self.main.wants()

    def emit(self, sign: SignTransform | None) -> bool:
        return self.main.emit(sign)

    def __call__(self, x: Act, post: Act | None = None) -> Act:
        return self.main(x, self.side(x))


class SequenceUnit(Unit):
    def __init__(self, units: list[Unit]) -> None:
        self.units = units
        for producer, consumer in zip(units, units[1:]):
            emit_for(producer, [consumer])

    def wants(self) -> list[SignTransform | None]:
        return self.units[0].wants() if self.units else []

    def emit(self, sign: SignTransform | None) -> bool:
        return bool(self.units) and self.units[-1].emit(sign)

    def __call__(self, x: Act, post: Act | None = None) -> Act:
        for u in self.units:
            x = u(x)
        return x


class ConcatUnit(Unit):
    """h = first(x), then the chains on h written into the channel blocks of one output (ReActNet's
    widening 1×1 units)."""

    def __init__(self, first: Unit, chains: list[Chain], arena: Arena) -> None:
        self.first, self.chains, self.arena = first, chains, arena

    def wants(self) -> list[SignTransform | None]:
        return self.first.wants()

    def emit(self, sign: SignTransform | None) -> bool:
        return len(self.chains) == 1 and self.chains[0].emit(sign)

    def __call__(self, x: Act, post: Act | None = None) -> Act:
        h = self.first(x)
        if len(self.chains) == 1:
            return self.chains[0](h)
        n, hh, ww, _ = h.nhwc().shape
        widths = [c.steps[-1].conv.out_channels for c in self.chains]
        out = self.arena.array((id(self), "floats"), (n, hh, ww, sum(widths)), np.float32)
        start = 0
        for chain, width in zip(self.chains, widths):
            chain(h, out=out[..., start:start + width])
            start += width
        return Act(a=out)
