"""Candidate operations: name → builder(C, stride, cfg). One builder serves fp32 and binary twins."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from bitnas.common.layout import spatial_slice, spatial_slices
from bitnas.registry import Registry
from bitnas.space.batchnorm import BatchNorm2d
from bitnas.space.config import OpConfig
from bitnas.space.pooling import MaxPool2d
from bitnas.space.structures import STRUCTURES, ResidualBlock, mark_private_inputs

OpBuilder = Callable[[int, int, OpConfig], nn.Module]
OPS: Registry[OpBuilder] = Registry("operation")


class Zero(nn.Module):
    """The `none` op: outputs zeros (strided when reducing)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1×1 convs (DARTS); binary in the child."""

    def __init__(self, c_in: int, c_out: int, cfg: OpConfig) -> None:
        super().__init__()
        assert c_out % 2 == 0
        binary = cfg.binary and cfg.binary_preprocess
        self.pre = nn.ReLU(inplace=False) if not binary else nn.Identity()
        self.conv_1 = cfg.conv(c_in, c_out // 2, 1, stride=2, binary=binary)
        self.conv_2 = cfg.conv(c_in, c_out // 2, 1, stride=2, binary=binary)
        self.bn = BatchNorm2d(c_out, affine=cfg.affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre(x)
        if self.conv_1.subsamples_first(x):  # each conv reads its own stride-2 grid of x, no 1-offset copy
            xa, xb = spatial_slices(x, ((0, 0), (1, 1)), (2, 2))  # one backward: one zero fill, no sum
            a = self.conv_1(xa, subsampled=True)
            b = self.conv_2(xb, subsampled=True)
        else:
            a = self.conv_1(x)
            b = self.conv_2(spatial_slice(x, (1, 1), (1, 1)))
        if b.shape[-2:] != a.shape[-2:]:
            # Odd input sizes (e.g. 7×7): pad the shifted branch back to the same grid.
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.bn(torch.cat([a, b], dim=1))


class ReLUConvBN(nn.Module):
    """Cell preprocessing: ReLU → 1×1 conv → BN (fp32), sign → binary 1×1 → BN (binary)."""

    def __init__(self, c_in: int, c_out: int, cfg: OpConfig) -> None:
        super().__init__()
        binary = cfg.binary and cfg.binary_preprocess
        self.pre = nn.ReLU(inplace=False) if not binary else nn.Identity()
        self.conv = cfg.conv(c_in, c_out, 1, binary=binary)
        self.bn = BatchNorm2d(c_out, affine=cfg.affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.pre(x)))


class Conv7x1x7(nn.Module):
    """DARTS' conv_7x1_1x7 (not in its search space, but valid in its genotypes)."""

    def __init__(self, c: int, stride: int, cfg: OpConfig) -> None:
        super().__init__()
        self.pre = cfg.pre_activation()
        self.conv_1 = cfg.conv(c, c, (1, 7), stride=(1, stride), padding=(0, 3))
        self.conv_2 = cfg.conv(c, c, (7, 1), stride=(stride, 1), padding=(3, 0))
        self.bn = BatchNorm2d(c, affine=cfg.affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv_2(self.conv_1(self.pre(x))))


class SepConv(nn.Sequential):
    """Separable conv: two separable units, the first strided (DARTS SepConv)."""

    def __init__(self, c: int, k: int, stride: int, cfg: OpConfig) -> None:
        super().__init__()
        s = STRUCTURES.get(cfg.structure)
        self.unit_1 = s.separable(cfg, c, c, k, stride, k // 2, 1)
        self.unit_2 = s.separable(cfg, c, c, k, 1, k // 2, 1)
        mark_private_inputs(self)  # unit_1's output feeds unit_2 only


def skip_connect(c: int, stride: int, cfg: OpConfig) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, cfg)


def _pool(kind: str) -> OpBuilder:
    def build(c: int, stride: int, cfg: OpConfig) -> nn.Module:
        if kind == "max":
            return MaxPool2d(3, stride=stride, padding=1)
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    return build


def _sep(k: int) -> OpBuilder:
    return lambda c, stride, cfg: SepConv(c, k, stride, cfg)


def _dil(k: int) -> OpBuilder:
    return lambda c, stride, cfg: STRUCTURES.get(cfg.structure).separable(cfg, c, c, k, stride, k - 1, 2)


def _conv(k: int, dil: int = 1) -> OpBuilder:
    pad = dil * (k - 1) // 2
    return lambda c, stride, cfg: STRUCTURES.get(cfg.structure).plain(cfg, c, c, k, stride, pad, dil)


OPS.register("none", lambda c, stride, cfg: Zero(stride), aliases=("zero",))
OPS.register("skip_connect", skip_connect, aliases=("identity",))
OPS.register("max_pool_3x3", _pool("max"))
OPS.register("avg_pool_3x3", _pool("avg"))
OPS.register("sep_conv_3x3", _sep(3))
OPS.register("sep_conv_5x5", _sep(5))
OPS.register("sep_conv_7x7", _sep(7))
OPS.register("dil_conv_3x3", _dil(3))
OPS.register("dil_conv_5x5", _dil(5))
OPS.register("conv_7x1_1x7", lambda c, stride, cfg: Conv7x1x7(c, stride, cfg))
OPS.register("conv_3x3", _conv(3))
OPS.register("conv_5x5", _conv(5))
OPS.register("dil_full_conv_3x3", _conv(3, 2))
OPS.register("dil_full_conv_5x5", _conv(5, 2))


def build_op(name: str, c: int, stride: int, cfg: OpConfig) -> nn.Module:
    """Build the op registered as `name` (aliases accepted)."""
    return OPS.get(name)(c, stride, cfg)


def is_parameter_free_identity(op: nn.Module) -> bool:
    """True for ops that drop path must not touch (identity)."""
    return isinstance(op, nn.Identity)


def forward_plus(op: nn.Module, x: Tensor, addend: Tensor) -> Tensor:
    """`op(x) + addend`, with the sum taken in the pass of op's last batch norm where op ends in
    one (a residual block of nothing after its add, a conv unit, a chain of them): equal bit for bit
    (float addition commutes) with one pass and one tensor fewer; the autograd graph keeps its
    order (no node runs earlier or later), only the add's node is gone."""
    if isinstance(op, ResidualBlock):
        return op(x, addend)
    if isinstance(op, BatchNorm2d):
        return op(x, addend=addend)
    if isinstance(op, nn.Sequential) and type(op).forward is nn.Sequential.forward and len(op) > 0:
        *head, last = op
        for m in head:
            x = m(x)
        return forward_plus(last, x, addend)
    return op(x) + addend
