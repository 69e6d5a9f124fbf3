"""Max pooling whose channels-last training passes run in the C++ extension.

ATen's channels-last max pool and its backward (the zero-filled gradient, then a scatter-add)
took ~5 % of a training step of the protocol network; `bitnas.binary.fused.max_pool_forward` /
`max_pool_backward` take the same window scans and the same adds in the same order, so outputs,
chosen maxima (ties, NaN) and gradients are bitwise ATen's. Anything else (no gradient needed,
NCHW, other dtypes or devices, dilation, ceil mode, returned indices, tracing, the extension
not built, several torch threads) runs `nn.MaxPool2d` unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from bitnas.binary.fused import max_pool_backward, max_pool_fits, max_pool_forward


class _MaxPool(torch.autograd.Function):
    """Max pooling through the C++ kernel; int32 indices saved for the backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, k: int, s: int, p: int) -> Tensor:
        y, idx = max_pool_forward(x, k, s, p)
        ctx.save_for_backward(idx)
        ctx.shape = x.shape  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (idx,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return max_pool_backward(grad, idx, ctx.shape), None, None, None  # type: ignore[attr-defined]


class MaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` (same arguments, no state) with the C++ route for channels-last training."""

    def forward(self, x: Tensor) -> Tensor:
        fast = self._square()
        if (fast is not None and x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing()
                and not torch.jit.is_scripting() and max_pool_fits(x, *fast)):
            return _MaxPool.apply(x, *fast)
        return super().forward(x)

    def _square(self) -> tuple[int, int, int] | None:
        """(k, stride, padding) when the kernel takes this pooling (square, no dilation, floor mode)."""
        (kh, kw), (sh, sw), (ph, pw) = _pair(self.kernel_size), _pair(self.stride or self.kernel_size), _pair(self.padding)
        if kh != kw or sh != sw or ph != pw or _pair(self.dilation) != (1, 1) or self.ceil_mode or self.return_indices:
            return None
        return kh, sh, ph
