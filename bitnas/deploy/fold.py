"""Fold each binary conv's α and the BatchNorm right after it into one multiply-add per channel.

A binary conv computes α·dot (dot the exact ±1 count); an eval-mode BN after it computes
(y − μ)·γ/√(σ² + ε) + β. Together: dot·mul + add with mul = α·γ/√(σ² + ε) and
add = β − μ·γ/√(σ² + ε), computed in float64. Which BN follows which conv is a property of the
module that holds both (see `following_bn`); a conv with no BN after it folds to (α, 0).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bitnas.binary import BinaryConv2d
from bitnas.space.operations import Conv7x1x7, FactorizedReduce, ReLUConvBN
from bitnas.space.structures import ConvUnit, ResidualBlock, SepUnit

def _bn(holder: nn.Module, name: str) -> bool:
    return isinstance(getattr(holder, name, None), nn.BatchNorm2d)


def following_bn(model: nn.Module) -> dict[str, tuple[str, int] | None]:
    """{binary conv name: (name of the BN applied right after it, channel offset) or None}."""
    out: dict[str, tuple[str, int] | None] = {}
    for hname, holder in model.named_modules():
        prefix = f"{hname}." if hname else ""
        pairs: list[tuple[str, str | None, int]] = []
        if isinstance(holder, (ConvUnit, ReLUConvBN)):
            pairs = [("conv", "bn", 0)]
        elif isinstance(holder, SepUnit):
            pairs = [("dw", "bn_dw" if _bn(holder, "bn_dw") else None, 0), ("pw", "bn", 0)]
        elif isinstance(holder, ResidualBlock):
            pairs = [("conv", "bn" if _bn(holder, "bn") else None, 0)]
        elif isinstance(holder, FactorizedReduce):
            pairs = [("conv_1", "bn", 0), ("conv_2", "bn", holder.conv_1.out_channels)]
        elif isinstance(holder, Conv7x1x7):
            pairs = [("conv_1", None, 0), ("conv_2", "bn", 0)]
        for conv, bn, offset in pairs:
            layer = getattr(holder, conv)
            if isinstance(layer, BinaryConv2d) and layer.is_binary:
                out[prefix + conv] = (prefix + bn, offset) if bn else None
    return out


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) in float64 with bn(y) = y·scale + shift in eval mode."""
    var = bn.running_var.detach().double().cpu().numpy()
    mean = bn.running_mean.detach().double().cpu().numpy()
    inv = 1.0 / np.sqrt(var + bn.eps)
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(var)
    beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(var)
    return gamma * inv, beta - mean * gamma * inv


def fold(alpha: torch.Tensor | np.ndarray, bn: nn.BatchNorm2d | None, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mul, add) in float64 of α followed by channels offset.. of `bn` (or by nothing)."""
    a = np.asarray(alpha.detach().cpu().double().numpy() if isinstance(alpha, torch.Tensor) else alpha,
                   dtype=np.float64).reshape(-1)
    if bn is None:
        return a, np.zeros_like(a)
    scale, shift = bn_affine(bn)
    scale, shift = scale[offset:offset + a.size], shift[offset:offset + a.size]
    return a * scale, shift
