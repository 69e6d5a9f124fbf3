"""Sign and surrogate gradients in one pass: the optional C++ kernels (`bitnas.binary._fused`),
else the torch expressions they replace.

The kernels compute the same IEEE float operations in the same order as the torch expressions
(no FMA contraction), so results are bitwise identical either way; the kernels only save
passes over memory (sign: 3 → 1, ApproxSign gradient: 5 → 1, STE gradient: 3 → 1). They serve
float32 CPU tensors that are dense in one memory layout shared by all operands (NCHW or
channels-last); anything else (CUDA, other dtypes, mixed layouts, the extension not built, or
$BITNAS_FUSED=0) takes the torch path.
"""
from __future__ import annotations

import os
from functools import lru_cache
from types import ModuleType

import torch
from torch import Tensor

ENV = "BITNAS_FUSED"


@lru_cache(maxsize=1)
def extension() -> ModuleType | None:
    """The compiled kernels, or None (not built, or disabled with $BITNAS_FUSED=0)."""
    if os.environ.get(ENV, "1").strip() == "0":
        return None
    try:
        from bitnas.binary import _fused
    except ImportError:
        return None
    return _fused


def _dense(x: Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """Same shape and the same strides wherever a dimension is longer than 1 (the stride of a
    size-1 dimension is arbitrary): element i of one flat buffer is element i of the other."""
    return a.shape == b.shape and all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()))


def _fusable(x: Tensor, *others: Tensor) -> bool:
    """True when the kernels can take `x` (and `others`) as flat buffers of one layout."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not _dense(x):
        return False
    return all(o.device.type == "cpu" and o.dtype == torch.float32 and _same_layout(o, x) for o in others)


def sign(x: Tensor) -> Tensor:
    """sign with sign(0) = +1 (torch.sign(0) = 0 would leave a third value); NaN gives −1.

    Torch path: the comparison writes 1.0/0.0 straight into a tensor of x's dtype and the affine
    map runs in place (three passes, no bool tensor, no dtype copy)."""
    out = torch.empty_like(x)
    ext = extension()
    if ext is not None and _fusable(x, out):
        ext.sign(x.data_ptr(), out.data_ptr(), x.numel())
        return out
    return torch.ge(x, 0, out=out).mul_(2).sub_(1)


def approx_sign_grad(x: Tensor, g: Tensor) -> Tensor:
    """g · max(0, 2 − 2|x|) (Bi-Real ApproxSign), in x's memory layout."""
    ext = extension()
    if ext is not None and _fusable(x, g):
        out = torch.empty_like(x)
        if _same_layout(out, x):
            ext.approx_sign_grad(x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel())
            return out
    # in place on one buffer (same roundings as the expression)
    return x.abs().mul_(-2.0).add_(2.0).clamp_min_(0.0).mul_(g)


def ste_sign_grad(x: Tensor, g: Tensor, clip: float) -> Tensor:
    """g · 1[|x| ≤ clip] (clipped straight-through estimator), in x's memory layout."""
    ext = extension()
    if ext is not None and _fusable(x, g):
        out = torch.empty_like(x)
        if _same_layout(out, x):
            ext.ste_sign_grad(x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel(), clip)
            return out
    # the mask made in place in x's dtype (no bool tensor, no copy)
    return x.abs().le_(clip).mul_(g)
