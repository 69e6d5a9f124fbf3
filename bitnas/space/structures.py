"""Module structures of binary conv ops (METHODS §4.3): how sign, conv, BN, shortcut combine.

A structure builds a `unit` for one conv (`plain`) or for a depthwise k×k + pointwise 1×1
pair (`separable`). In fp32 every quantizer is absent, so the parent has the same module
names and kernel shapes as the child.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bitnas.binary.quantizers import ApproxSign, LearnableBiasSign, SteSign
from bitnas.registry import Registry
from bitnas.space.batchnorm import BatchNorm2d

STRUCTURES: Registry["Structure"] = Registry("module structure")


class Structure:
    """Builds plain and separable conv units for one module ordering."""

    name = "structure"
    description = ""

    def plain(self, cfg, c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int) -> nn.Module:
        raise NotImplementedError

    def separable(self, cfg, c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int) -> nn.Module:
        raise NotImplementedError


class ConvUnit(nn.Sequential):
    """pre → conv → BN: the DARTS ReLUConvBN (fp32) or conv→BN with sign inside (binary)."""

    def __init__(self, cfg, c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int = 1) -> None:
        super().__init__()
        self.pre = cfg.pre_activation()
        self.conv = cfg.conv(c_in, c_out, k, stride, pad, dil)
        self.bn = BatchNorm2d(c_out, affine=cfg.affine)


class SepUnit(nn.Module):
    """pre → depthwise k×k → [BN] → pointwise 1×1 → BN.

    The middle BN exists only in the binary child when `mid_bn` (CP-NAS binarised separable
    conv: binary depthwise → BN → binary 1×1 → BN); the fp32 parent is exactly DARTS' DilConv.
    """

    def __init__(self, cfg, c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int, mid_bn: bool) -> None:
        super().__init__()
        self.pre = cfg.pre_activation()
        self.dw = cfg.conv(c_in, c_in, k, stride, pad, dil, groups=c_in)
        self.bn_dw = BatchNorm2d(c_in, affine=cfg.affine) if (mid_bn and cfg.binary) else nn.Identity()
        self.pw = cfg.conv(c_in, c_out, 1)
        self.bn = BatchNorm2d(c_out, affine=cfg.affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.pw(self.bn_dw(self.dw(self.pre(x)))))


class DartsStructure(Structure):
    name = "darts"
    description = "DARTS ops with ReLU dropped and convs binarised (naive binarisation)"

    def plain(self, cfg, c_in, c_out, k, stride, pad, dil):
        return ConvUnit(cfg, c_in, c_out, k, stride, pad, dil)

    def separable(self, cfg, c_in, c_out, k, stride, pad, dil):
        return SepUnit(cfg, c_in, c_out, k, stride, pad, dil, mid_bn=False)


class CpnasStructure(DartsStructure):
    name = "cpnas"
    description = "CP-NAS: binary depthwise → BN → binary 1×1 → BN"

    def separable(self, cfg, c_in, c_out, k, stride, pad, dil):
        return SepUnit(cfg, c_in, c_out, k, stride, pad, dil, mid_bn=True)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """Identity (or 2×2 average pool when stride is 2) when shapes allow a residual, else None."""
    if c_in != c_out:
        return None
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)


class RPReLU(nn.Module):
    """ReActNet RPReLU: shift, PReLU, shift (per channel)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.prelu = nn.PReLU(c, init=0.25)
        self.shift_out = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(x - self.shift_in) + self.shift_out


class ResidualBlock(nn.Module):
    """One binary conv in a residual ordering: [bn_in] → [sign] → conv → [bn] → (+ shortcut) → [act]."""

    def __init__(self, cfg, c_in, c_out, k, stride, pad, dil, groups, *, bn_in: bool, bn_out: bool,
                 residual: bool, act: str, rsign: bool) -> None:
        super().__init__()
        self.bn_in = BatchNorm2d(c_in, affine=cfg.affine) if bn_in else nn.Identity()
        # fp32 parent: ReLU where the child has its sign; binary: the sign sits in the conv,
        # or is ReAct's learnable-bias sign (then the conv takes the ±1 input as it is).
        use_rsign = rsign and cfg.binary
        self.pre = LearnableBiasSign(c_in) if use_rsign else cfg.pre_activation()
        self.conv = cfg.conv(c_in, c_out, k, stride, pad, dil, groups)
        if use_rsign:
            self.conv.input_quantizer = None
            self.conv.signed_input = True
        self.bn = BatchNorm2d(c_out, affine=cfg.affine) if bn_out else nn.Identity()
        self.shortcut = _shortcut(c_in, c_out, stride) if residual else None
        acts = {"prelu": lambda: nn.PReLU(c_out), "rprelu": lambda: RPReLU(c_out),
                "relu": lambda: nn.ReLU(inplace=False), "none": nn.Identity}
        self.act = acts[act]()
        # True when x feeds this block and nothing else (`mark_private_inputs`)
        self.private_input = False

    def forward(self, x: Tensor, addend: Tensor | None = None) -> Tensor:
        """The block of `x`, + `addend` when given (a cell node's other term: summed in the batch
        norm's pass when nothing follows the residual add, as a separate add after it did)."""
        signed = self._sign_with_residual(x)
        if signed is None:
            out = self.conv(self.pre(self.bn_in(x)))
            residual = self.shortcut(x) if self.shortcut is not None else None
        else:
            s, residual = signed
            out = self.conv(s, quantized=True)
        if residual is not None and isinstance(self.bn, BatchNorm2d):
            if isinstance(self.act, nn.Identity):  # BN, the residual add and the addend in one pass
                return self.bn(out, residual, addend)
            out = self.act(self.bn(out, residual=residual))
        else:
            out = self.bn(out)
            if residual is not None:
                out = out + residual
            out = self.act(out)
        return out if addend is None else out + addend

    def _sign_with_residual(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(sign(x), x) from the conv's input quantizer through one node when `x` feeds this
        block's sign and its identity shortcut and nothing else (`private_input`, set by
        `mark_private_inputs`): the two gradients of x are then summed in the sign's backward pass,
        the sum autograd would form of two terms. None where that does not apply."""
        if not (self.private_input and isinstance(self.shortcut, nn.Identity) and isinstance(self.bn_in, nn.Identity)
                and isinstance(self.pre, nn.Identity) and x.requires_grad and torch.is_grad_enabled()):
            return None
        iq = getattr(self.conv, "input_quantizer", None)
        return None if iq is None else iq.with_residual(x)


def mark_private_inputs(seq: nn.Sequential) -> nn.Sequential:
    """Mark the first residual block of every module after the first in `seq` (a plain
    `nn.Sequential`) as having a private input: there each module's output feeds the next module
    only. Where the module before ends in a block whose batch norm gives its output and that block
    signs it, that batch norm also writes the sign in its pass (`BatchNorm2d.keep_sign`). Returns `seq`."""
    mods = list(seq)
    for prev, m in zip(mods, mods[1:]):
        while isinstance(m, nn.Sequential) and len(m) > 0:
            m = m[0]
        while isinstance(prev, nn.Sequential) and len(prev) > 0:
            prev = prev[-1]
        if not isinstance(m, ResidualBlock):
            continue
        m.private_input = True
        iq = getattr(m.conv, "input_quantizer", None)
        if (isinstance(prev, ResidualBlock) and isinstance(prev.bn, BatchNorm2d) and isinstance(prev.act, nn.Identity)
                and isinstance(iq, (ApproxSign, SteSign)) and isinstance(m.bn_in, nn.Identity)
                and isinstance(m.pre, nn.Identity)):
            prev.bn.keep_sign = True
    return seq


class _ResidualStructure(Structure):
    opts: dict = {}

    def _block(self, cfg, c_in, c_out, k, stride, pad, dil, groups):
        return ResidualBlock(cfg, c_in, c_out, k, stride, pad, dil, groups, **self.opts)

    def plain(self, cfg, c_in, c_out, k, stride, pad, dil):
        return self._block(cfg, c_in, c_out, k, stride, pad, dil, 1)

    def separable(self, cfg, c_in, c_out, k, stride, pad, dil):
        return mark_private_inputs(nn.Sequential(
            self._block(cfg, c_in, c_in, k, stride, pad, dil, c_in),
            self._block(cfg, c_in, c_out, 1, 1, 0, 1, 1),
        ))


class BiRealStructure(_ResidualStructure):
    name = "bireal"
    description = "Bi-Real: sign → bconv → BN → + x"
    opts = dict(bn_in=False, bn_out=True, residual=True, act="none", rsign=False)


class EbnasStructure(_ResidualStructure):
    name = "ebnas"
    description = "EBNAS: BN → sign → bconv → BN → + shortcut → PReLU"
    opts = dict(bn_in=True, bn_out=True, residual=True, act="prelu", rsign=False)


class KimStructure(_ResidualStructure):
    name = "kim"
    description = "Kim et al. BNAS: BN → sign → bconv → ReLU"
    opts = dict(bn_in=True, bn_out=False, residual=False, act="relu", rsign=False)


class ReActStructure(_ResidualStructure):
    name = "reactnet"
    description = "ReActNet: learnable-bias sign → bconv → BN → + x → RPReLU"
    opts = dict(bn_in=False, bn_out=True, residual=True, act="rprelu", rsign=True)


for _s in (DartsStructure(), CpnasStructure(), BiRealStructure(), EbnasStructure(), KimStructure(), ReActStructure()):
    STRUCTURES.register(_s.name, _s)
