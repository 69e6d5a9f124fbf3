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
Activations between units are float NHWC (torch channels-last) with their packed forms cached
per sign transform, so a state read by several binary ops is packed once. The units' outputs
(floats and packed bits) come from the network's arena (arena.py), reused from forward to forward.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary import BinaryConv2d
from bitnas.deploy import engine
from bitnas.deploy.arena import Arena
from bitnas.deploy.fold import bn_affine
from bitnas.deploy.plan import (ChainPlan, ConcatPlan, IdentityPlan, Plan, PostAddPlan, ReducePlan, SequencePlan,
                                SignTransform, Step, ZeroPlan, act_params, describe, folded, neg_bits)
from bitnas.nets.cells import Cell
from bitnas.space.edges import node_state

CL = torch.channels_last


class Act:
    """A float activation (NCHW shape, channels-last memory) and its packed forms by sign transform."""

    __slots__ = ("t", "packs")

    def __init__(self, t: Tensor) -> None:
        self.t = t if _nhwc_layout(t) else t.contiguous(memory_format=CL)
        self.packs: dict[Any, np.ndarray] = {}

    def nhwc(self) -> np.ndarray:
        return self.t.permute(0, 2, 3, 1).numpy()

    def packed(self, transform: "SignTransform | None", isa: str, threads: int, arena: Arena, slot: Any) -> np.ndarray:
        """The packed form under `transform`, packed on first use into the arena's `slot`."""
        key = pack_key(transform)
        if key not in self.packs:
            scale, shift = (transform.scale, transform.shift) if transform is not None else (None, None)
            n, c, h, w = self.t.shape
            out = arena.array(slot, (n, h, w, engine.words(c)), np.uint64)
            self.packs[key] = engine.pack(self.nhwc(), scale, shift, isa=isa, threads=threads, out=out)
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

    def fold(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return folded(self.exp, self.rows[name])

    def kernel(self, layer: BinaryConv2d, name: str, padding: tuple[int, int] | None = None) -> engine.BinaryConv:
        row = self.rows[name]
        self.compiled += 1
        conv = engine.BinaryConv(neg_bits(row, self.exp["bits"]), layer.in_channels, stride=tuple(layer.stride),
                                 padding=padding or tuple(layer.padding), dilation=tuple(layer.dilation),
                                 groups=layer.groups, pad_value=layer.pad_value if any(layer.padding) else 0.0)
        self.kernels.append(conv)
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

    def __call__(self, x: Act, post: Tensor | None = None) -> Any:
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

    def __call__(self, x: Act, post: Tensor | None = None) -> Any:
        return ZERO


class IdentityUnit(Unit):
    def __call__(self, x: Act, post: Tensor | None = None) -> Any:
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

    def __call__(self, x: Act, post: Tensor | None = None) -> Any:
        return Act(self.m(x.t))


class Chain(Unit):
    fuses_post = True

    def __init__(self, steps: list[Step], isa: str, threads: int, arena: Arena) -> None:
        self.steps, self.isa, self.threads, self.arena = steps, isa, threads, arena
        self.emits = False  # the last conv writes the output's packed form too
        self.emit_key: Any = None

    def wants(self) -> list[SignTransform | None]:
        return [self.steps[0].sign]

    def emit(self, sign: SignTransform | None) -> bool:
        _set_output(self.steps[-1], sign)
        self.emits, self.emit_key = True, pack_key(sign)
        return True

    def __call__(self, x: Act, post: Tensor | None = None, out: tuple[Tensor, np.ndarray] | None = None) -> Act:
        """Run the chain on x; `post` is added last; `out` (an NCHW view and its NHWC array, e.g.
        a channel slice of a larger buffer) receives the result instead of a new tensor."""
        first = self.steps[0]
        bits = x.packed(first.sign, self.isa, self.threads, self.arena, (id(self), "in"))
        prev = x.t
        for i, st in enumerate(self.steps):
            last = i == len(self.steps) - 1
            n, h, w = bits.shape[:3]
            oh, ow = st.conv.out_size(h, w)
            res = None
            if st.shortcut == "identity":
                res = prev.permute(0, 2, 3, 1).numpy()
            elif st.shortcut == "avgpool":
                res = st.pool(prev).contiguous(memory_format=CL).permute(0, 2, 3, 1).numpy()
            out_t = dst = out_bits = None
            if last and out is not None:
                out_t, dst = out
            elif st.float_out:
                out_t, dst = self.arena.act((id(self), i, "floats"), n, st.conv.out_channels, oh, ow)
            if not last or self.emits:
                out_bits = self.arena.array((id(self), i, "bits"), (n, oh, ow, engine.words(st.conv.out_channels)),
                                            np.uint64)
            p = post.permute(0, 2, 3, 1).numpy() if last and post is not None else None
            st.conv.run(bits, (oh, ow), out=dst, out_bits=out_bits, res=res, post=p, threshold=st.threshold,
                        isa=self.isa, threads=self.threads)
            bits, prev = out_bits, out_t
        y = Act(prev)
        if self.emits:
            y.packs[self.emit_key] = bits
        return y


class FactorizedReduceUnit(Unit):
    fuses_post = True

    def __init__(self, convs: list[engine.BinaryConv], isa: str, threads: int, arena: Arena) -> None:
        self.convs, self.isa, self.threads, self.arena = convs, isa, threads, arena

    def wants(self) -> list[SignTransform | None]:
        return [None]

    def __call__(self, x: Act, post: Tensor | None = None, out: tuple[Tensor, np.ndarray] | None = None) -> Act:
        bits = x.packed(None, self.isa, self.threads, self.arena, (id(self), "in"))
        n, h, w = bits.shape[:3]
        oh, ow = self.convs[0].out_size(h, w)
        half = self.convs[0].out_channels
        out_t, out = out if out is not None else self.arena.act((id(self), "floats"), n, 2 * half, oh, ow)
        p = post.permute(0, 2, 3, 1).numpy() if post is not None else None
        for i, conv in enumerate(self.convs):
            sl = slice(i * half, (i + 1) * half)
            conv.run(bits, (oh, ow), out=out[..., sl], post=None if p is None else p[..., sl], isa=self.isa,
                     threads=self.threads)
        return Act(out_t)


class PostAddUnit(Unit):
    """main(x) + side(x), the addition fused into main's output transform (Bi-Real downsample)."""

    fuses_post = False

    def __init__(self, main: Chain, side: Unit) -> None:
        self.main, self.side = main, side

    def wants(self) -> list[SignTransform | None]:
        return self.main.wants()

    def emit(self, sign: SignTransform | None) -> bool:
        return self.main.emit(sign)

    def __call__(self, x: Act, post: Tensor | None = None) -> Act:
        return self.main(x, self.side(x).t)


class SequenceUnit(Unit):
    def __init__(self, units: list[Unit]) -> None:
        self.units = units
        for producer, consumer in zip(units, units[1:]):
            emit_for(producer, [consumer])

    def wants(self) -> list[SignTransform | None]:
        return self.units[0].wants() if self.units else []

    def emit(self, sign: SignTransform | None) -> bool:
        return bool(self.units) and self.units[-1].emit(sign)

    def __call__(self, x: Act, post: Tensor | None = None) -> Act:
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

    def __call__(self, x: Act, post: Tensor | None = None) -> Act:
        h = self.first(x)
        if len(self.chains) == 1:
            return self.chains[0](h)
        n, _, hh, ww = h.t.shape
        widths = [c.steps[-1].conv.out_channels for c in self.chains]
        out_t, out = self.arena.act((id(self), "floats"), n, sum(widths), hh, ww)
        start = 0
        for chain, width in zip(self.chains, widths):
            sl = slice(start, start + width)
            chain(h, out=(out_t[:, sl], out[..., sl]))
            start += width
        return Act(out_t)


class CellUnit:
    """A cell: two preprocessed inputs, nodes summing two ops (the second addend fused into a
    conv's output transform when one of them ends in a binary conv), concatenation. After the
    first call for an input size, the nodes write straight into their channel block of the
    concatenated output."""

    def __init__(self, cell: Cell, name: str, compiler: Compiler) -> None:
        self.pre0 = compiler.unit(cell.preprocess0, f"{name}.preprocess0")
        self.pre1 = compiler.unit(cell.preprocess1, f"{name}.preprocess1")
        self.ops = [compiler.unit(op, f"{name}.ops.{i}") for i, op in enumerate(cell.ops)]
        self.indices, self.steps, self.concat = cell.indices, cell.steps, cell.concat
        self.zero_ops = cell.ops
        self.arena = compiler.arena
        self.layouts: dict[tuple[int, ...], tuple[int, int, int]] = {}
        readers = [[op for op, k in zip(self.ops, self.indices) if k == s] for s in range(2 + self.steps)]
        emit_for(self.pre0, readers[0])
        emit_for(self.pre1, readers[1])
        for i in range(self.steps):
            producer = self._producer(i)
            if producer is not None:
                emit_for(producer, readers[node_state(i)])

    def _order(self, i: int) -> tuple[int, int]:
        """Node i's ops (a, b): b is the one that adds a's output in its epilogue when one can."""
        a, b = 2 * i, 2 * i + 1
        if not self.ops[b].fuses_post and self.ops[a].fuses_post:
            a, b = b, a
        return a, b

    def _producer(self, i: int) -> Unit | None:
        """The op whose output is node i's value (its epilogue adds the other's), None when the
        node sums two outputs in torch."""
        a, b = self._order(i)
        if isinstance(self.ops[a], ZeroUnit) or self.ops[b].fuses_post:
            return self.ops[b]
        return self.ops[a] if isinstance(self.ops[b], ZeroUnit) else None

    def _node(self, i: int, states: list[Act], dst: tuple[Tensor, np.ndarray] | None) -> Act:
        a, b = self._order(i)
        ha = self.ops[a](states[self.indices[a]])
        xb = states[self.indices[b]]
        fused = self.ops[b].fuses_post
        if ha is ZERO:
            hb = self.ops[b](xb, out=dst) if fused else self.ops[b](xb)
        elif fused:
            hb = self.ops[b](xb, ha.t, out=dst)
        else:
            hb = self.ops[b](xb)
            if hb is ZERO:
                hb = ha
            elif dst is not None:
                torch.add(ha.t, hb.t, out=dst[0])
                return Act(dst[0])
            else:
                hb = Act(ha.t + hb.t)
        if hb is ZERO:  # both ops are `none`: zeros of the shape the op gives
            hb = Act(self.zero_ops[b](xb.t))
        if dst is not None and hb.t.data_ptr() != dst[0].data_ptr():
            dst[0].copy_(hb.t)
            copied = Act(dst[0])
            copied.packs = hb.packs  # the same values
            return copied
        return hb

    def __call__(self, s0: Act, s1: Act) -> Act:
        states = [self.pre0(s0), self.pre1(s1)]
        key = tuple(s0.t.shape) + tuple(s1.t.shape)
        layout = self.layouts.get(key)
        buf: tuple[Tensor, np.ndarray] | None = None
        if layout is not None:
            c, h, w = layout
            buf = self.arena.act((id(self), "floats"), states[0].t.shape[0], c * len(self.concat), h, w)
        for i in range(self.steps):
            dst = None
            if buf is not None and node_state(i) in self.concat:
                j = self.concat.index(node_state(i))
                dst = (buf[0][:, j * c:(j + 1) * c], buf[1][..., j * c:(j + 1) * c])
            states.append(self._node(i, states, dst))
        if buf is None:
            first = states[self.concat[0]].t
            if all(states[k].t.shape == first.shape for k in self.concat):
                self.layouts[key] = (first.shape[1], first.shape[2], first.shape[3])
            return Act(torch.cat([states[k].t for k in self.concat], dim=1))
        for j, k in enumerate(self.concat):  # blocks not written by their node (inputs, repeats)
            if k < 2 or self.concat.index(k) != j:
                buf[0][:, j * c:(j + 1) * c].copy_(states[k].t)
        return Act(buf[0])


class EngineNetwork(nn.Module):
    """An exported network whose binary convs run on the bitpack kernels; forward(x) gives
    (logits, None) like the float network, x normalised as in training (NCHW float32)."""

    def __init__(self, model: nn.Module, exp: dict[str, Any], *, threads: int = 1, isa: str | None = None) -> None:
        super().__init__()
        engine.extension()
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.net = model.eval().to(memory_format=CL)
        self.isa, self.threads = engine.resolve_isa(isa), int(threads)
        self.arena = Arena()
        compiler = Compiler(exp, engine.isa_spec(isa), self.threads, self.arena)  # "auto": per-layer kernel choice
        self.genotype_cells = hasattr(model, "stem_forward")
        self.stems = {n: fold_conv_bn(getattr(model, n)) for n in ("stem", "stem0", "stem1") if hasattr(model, n)}
        if self.genotype_cells:
            self.cells: list[Any] = [CellUnit(c, f"cells.{i}", compiler) for i, c in enumerate(model.cells)]
        else:
            self.cells = [compiler.unit(c, f"cells.{i}") for i, c in enumerate(model.cells)]
            for producer, consumer in zip(self.cells, self.cells[1:]):
                emit_for(producer, [consumer])
        self.units = compiler.compiled
        self.kernels = compiler.kernels

    def kernel_rows(self) -> dict[str, int]:
        """How many binary convs ran on each ISA row in their last call (the automatic choice may
        put a layer on the best row's rival, e.g. amx or avx512)."""
        rows: dict[str, int] = {}
        for conv in self.kernels:
            if conv.last_isa is not None:
                rows[conv.last_isa] = rows.get(conv.last_isa, 0) + 1
        return rows

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        with torch.inference_mode():
            self.arena.begin()
            x = x.float().contiguous(memory_format=CL)
            if self.genotype_cells:
                if "stem0" in self.stems:
                    s0 = self.stems["stem0"](x)
                    s1 = self.stems["stem1"](s0)
                else:
                    s0 = s1 = self.stems["stem"](x)
                a0 = Act(s0)
                a1 = a0 if s1 is s0 else Act(s1)
                for cell in self.cells:
                    a0, a1 = a1, cell(a0, a1)
            else:
                a1 = Act(self.stems["stem"](x))
                for cell in self.cells:
                    a1 = cell(a1)
            pooled = F.adaptive_avg_pool2d(a1.t, 1).flatten(1)
            return self.net.classifier(pooled), None

    def extra_repr(self) -> str:
        return f"isa={self.isa}, threads={self.threads}, binary convs on the kernels={self.units}"
