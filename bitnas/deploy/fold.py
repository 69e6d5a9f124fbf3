"""Fold each binary conv's α and the BatchNorm right after it into one multiply-add per channel.

A binary conv computes α·dot (dot the exact ±1 count); an eval-mode BN after it computes
(y − μ)·γ/√(σ² + ε) + β. Together: dot·mul + add with mul = α·γ/√(σ² + ε) and
add = β − μ·γ/√(σ² + ε), computed in float64. Which BN follows which conv is a property of the
module that holds both (`bitnas.deploy.modules.following_bn`); a conv with no BN after it folds to (α, 0).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


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
